"""Bad and odd image files, made for real, through the loader, ``ghns data info`` and (slow)
``ghns pipeline`` and ``ghns predict``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ghns.data.catalog import Catalog
from ghns.data.images import BadImage, load_rgb
from tests.conftest import write_image
from tests.faults import corpus

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, corpus.build(folder)


def test_each_file_is_refused_with_its_reason_or_loaded_right(bad_files):
    folder, expected = bad_files
    for name, reason in expected.items():
        if reason is None:
            img = load_rgb(folder / name)
            assert img.mode == "RGB", name
        else:
            with pytest.raises(BadImage) as exc:
                load_rgb(folder / name)
            assert exc.value.reason == reason, name
            assert name in str(exc.value)


def test_16bit_images_are_scaled_not_clipped(bad_files):
    folder, _ = bad_files
    for name in ("grey16.png", "rgb16.png"):  # 40000 of 65535 is 155.6 of 255
        arr = np.asarray(load_rgb(folder / name))
        assert abs(int(arr.mean()) - 156) <= 1, (name, arr.mean())


def test_exif_orientation_is_applied(bad_files):
    folder, _ = bad_files
    img = np.asarray(load_rgb(folder / "exif6.jpg")).astype(int)
    assert img.shape[:2] == (40, 20)  # shown upright: 20 wide, 40 high
    top, bottom = img[:15].mean((0, 1)), img[25:].mean((0, 1))
    assert top[0] > 200 and top[2] < 60, top      # red on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom  # blue below


def test_the_pixel_limit_is_an_option(bad_files, tmp_path):
    path = write_image(tmp_path / "small.png", size=(40, 30))
    assert load_rgb(path, max_pixels=1200).size == (40, 30)
    with pytest.raises(BadImage, match="40x30 pixels, over the limit of 1199"):
        load_rgb(path, max_pixels=1199)


_RSS = """
import resource, sys
from ghns.data.images import BadImage, check_image
try:
    check_image(sys.argv[1], "full")
except BadImage as exc:
    print(exc.reason)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_the_bomb_costs_no_memory(bad_files, tmp_path):
    """Peak RSS of checking the bomb (169 MB decoded, 507 MB as RGB) against a 40 x 30 image,
    each in its own fresh process."""
    folder, _ = bad_files
    small = write_image(tmp_path / "small.png")

    def peak_kb(path: Path) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _RSS, str(path)], capture_output=True, text=True,
                             check=True).stdout.split()
        return (out[0] if len(out) == 2 else ""), int(out[-1])

    reason, bomb = peak_kb(folder / "bomb.png")
    _, base = peak_kb(small)
    assert reason == "too-large"
    assert bomb - base < 30_000, f"the bomb raised peak RSS by {(bomb - base) // 1024} MB"


def imagefolder(root: Path, bad: Path, expected: dict) -> Path:
    """Three classes of 10 good images each, and the corpus spread over them."""
    for c in range(3):
        for i in range(10):
            write_image(root / f"class{c}" / f"good{i}.png", size=(48, 48), seed=100 * c + i)
    for k, name in enumerate(expected):
        (root / f"class{k % 3}" / name).write_bytes((bad / name).read_bytes())
    return root


def test_data_info_counts_every_refused_file(bad_files, tmp_path, cli):
    folder, expected = bad_files
    root = imagefolder(tmp_path / "flowers", folder, expected)
    code, out, err = cli("data", "info", "--dataset", "imagefolder", "--root", root)
    assert code == 0, err
    loadable = sum(r is None for r in expected.values())
    assert "Traceback" not in err
    assert "skipped images: 5 (1 empty, 2 too-large, 1 truncated, 1 unreadable)" in out
    total = [line for line in out.splitlines() if " total " in line][0]
    assert sum(int(x) for x in total.split()[-3:]) == 30 + loadable


@pytest.mark.slow
def test_pipeline_and_predict_on_the_corpus(bad_files, tmp_path, cli, ray_session):
    from tests.conftest import TINY_SYNTHETIC

    folder, expected = bad_files
    root = imagefolder(tmp_path / "odd", folder, expected)
    run = tmp_path / "run"
    pairs = zip(TINY_SYNTHETIC[::2], TINY_SYNTHETIC[1::2])
    tiny = [x for flag, value in pairs if not flag.startswith("--synthetic") for x in (flag, value)]
    code, out, err = cli("pipeline", "--dataset", "imagefolder", "--root", root, "--run-dir", run,
                         "--backbone", "tiny_cnn", "--pretrained", "none", "--localize-image-size", "48",
                         "--part-image-size", "32", *tiny)
    assert code == 0, err[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert 0 <= report["accuracy"]["fused"] <= 100
    skipped = Catalog.read(run / "catalog.parquet").info["skipped"]
    assert skipped == {"empty": 1, "too-large": 2, "truncated": 1, "unreadable": 1}
    code, out, err = cli("predict", "--run-dir", run, *[folder / n for n in expected])
    assert code == 1 and "Traceback" not in err  # exit 1: some images could not be used
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == sum(r is not None for r in expected.values())
    for name, reason in expected.items():
        if reason is None:
            assert f"{folder / name}\n" in out
        else:
            assert any(name in e and reason in e for e in errors), (name, errors)


def test_a_padded_file_over_the_byte_limit_is_refused_before_it_is_read(tmp_path, cli, monkeypatch):
    """A valid 40 x 30 PNG with 3 MB of trailing bytes decodes fine; over ``--max-image-bytes`` it
    is a counted too-large skip, and nothing of it is read (its content hash is never taken)."""
    from ghns.data import images

    padded = write_image(tmp_path / "flowers" / "a" / "padded.png")
    padded.write_bytes(padded.read_bytes() + b"\0" * 3_000_000)
    assert images.load_rgb(padded).size == (40, 30)  # under the default limit it is an image
    with pytest.raises(images.BadImage, match=r"bytes on disk, over the limit of 1000000 \(--max-image-bytes\)"):
        images.load_rgb(padded, max_bytes=1_000_000)
    for i in range(4):
        write_image(tmp_path / "flowers" / "a" / f"good{i}.png", seed=i)
        write_image(tmp_path / "flowers" / "b" / f"good{i}.png", seed=10 + i)
    read = []
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real_read_bytes(self))
    code, out, err = cli("data", "info", "--dataset", "imagefolder", "--root", tmp_path / "flowers",
                         "--max-image-bytes", "1000000")
    assert code == 0, err
    assert "skipped images: 1 (1 too-large)" in out and "padded.png" not in read
