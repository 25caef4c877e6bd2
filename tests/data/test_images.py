from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from ghns.data.images import BadImage, load_rgb, verify_images
from tests.conftest import truncate, write_image


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("CMYK", ".jpg"), ("RGBA", ".png"),
                                         ("P", ".png"), ("LA", ".png"), ("RGB", ".jpg")])
def test_any_mode_loads_as_rgb(tmp_path, mode, suffix):
    path = write_image(tmp_path / f"x{suffix}", mode=mode)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (40, 30)


def test_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(path)
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("make,reason", [
    (lambda p: p, "missing"),
    (lambda p: (p.write_bytes(b""), p)[1], "empty"),
    (lambda p: (p.write_bytes(b"not an image at all" * 10), p)[1], "unreadable"),
    (lambda p: truncate(write_image(p, size=(64, 64))), "truncated"),
])
def test_bad_images_raise_with_reason(tmp_path, make, reason):
    path = make(tmp_path / "bad.jpg")
    with pytest.raises(BadImage) as exc:
        load_rgb(path)
    assert exc.value.reason == reason


def test_verify_counts_skips_and_keeps_the_rest(tmp_path, caplog):
    good = [write_image(tmp_path / f"ok{i}.jpg", seed=i) for i in range(3)]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    trunc = truncate(write_image(tmp_path / "trunc.jpg", size=(64, 64), seed=9))
    paths = [good[0], empty, good[1], tmp_path / "missing.jpg", trunc, good[2]]
    df = pd.DataFrame({"image_id": range(1, 7), "path": [str(p) for p in paths],
                       "split": ["train"] * 6})
    kept, report = verify_images(df, level="full", progress=False)
    assert kept["image_id"].tolist() == [1, 3, 6]
    assert dict(report.skipped) == {"empty": 1, "missing": 1, "truncated": 1}
    assert report.checked == 6 and report.n_skipped == 3
    assert "3 skipped" in report.summary()
    assert sum("skipping image" in r.message for r in caplog.records) == 3


def test_header_level_misses_truncation_but_catches_the_rest(tmp_path):
    trunc = truncate(write_image(tmp_path / "trunc.jpg", size=(64, 64)))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    df = pd.DataFrame({"image_id": [1, 2], "path": [str(trunc), str(empty)], "split": ["test"] * 2})
    kept, report = verify_images(df, level="header", progress=False)
    assert kept["image_id"].tolist() == [1] and dict(report.skipped) == {"empty": 1}
