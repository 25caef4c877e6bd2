from __future__ import annotations

import pytest

from ghns.config import Config
from ghns.data import build_catalog
from ghns.errors import DataError
from tests.conftest import write_image

VARIANTS = ["707-320", "727-200", "A300B4"]


def make_aircraft(root, n=2):
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(VARIANTS) + "\n")
    boxes, image = [], 1000000
    for split in ("train", "val", "test"):
        lines = []
        for v in VARIANTS:
            for _ in range(n):
                image += 1
                write_image(data / "images" / f"{image}.jpg", seed=image)
                lines.append(f"{image} {v}")
                boxes.append(f"{image} 3 4 22 18")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    (data / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return root


def test_reads_variant_level_with_own_splits(tmp_path):
    make_aircraft(tmp_path)
    catalog = build_catalog(Config(dataset="aircraft", root=str(tmp_path)), progress=False)
    counts = catalog.counts()
    assert catalog.classes == VARIANTS
    assert counts[["train", "val", "test"]].values.tolist() == [[2, 2, 2]] * 3
    first = catalog.table.iloc[0]
    assert (first.box_x, first.box_y, first.box_w, first.box_h) == (2.0, 3.0, 20.0, 15.0)


def test_unknown_variant_is_clear(tmp_path):
    make_aircraft(tmp_path)
    f = tmp_path / "fgvc-aircraft-2013b" / "data" / "images_variant_val.txt"
    f.write_text(f.read_text() + "1000099 Concorde\n")
    with pytest.raises(DataError, match="'Concorde'"):
        build_catalog(Config(dataset="aircraft", root=str(tmp_path)), progress=False)


def test_missing_split_file_is_clear(tmp_path):
    make_aircraft(tmp_path)
    (tmp_path / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt").unlink()
    with pytest.raises(DataError, match="images_variant_test.txt"):
        build_catalog(Config(dataset="aircraft", root=str(tmp_path)), progress=False)
