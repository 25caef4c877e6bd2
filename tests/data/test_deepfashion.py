from __future__ import annotations

import pytest

from ghns.config import Config
from ghns.data import build_catalog
from ghns.errors import DataError
from tests.conftest import write_image

CATEGORIES = [("Anorak", 1), ("Blazer", 1), ("Blouse", 1), ("Jeans", 2)]


def make_deepfashion(root, n=3):
    """Category and Attribute Prediction Benchmark layout; category 2 (Blazer) has no image."""
    (root / "Anno").mkdir(parents=True)
    (root / "Eval").mkdir()
    cloth = [str(len(CATEGORIES)), "category_name  category_type"]
    cloth += [f"{name:<28}{kind}" for name, kind in CATEGORIES]
    (root / "Anno" / "list_category_cloth.txt").write_text("\n".join(cloth) + "\n")
    imgs, parts, boxes = [], [], []
    for label in (1, 3, 4):
        for split in ("train", "val", "test"):
            for k in range(n):
                rel = f"img/Item_{label}_{split}/img_{k:08d}.jpg"
                write_image(root / rel, seed=label * 100 + k)
                imgs.append(f"{rel:<60}{label}")
                parts.append(f"{rel:<60}{split}")
                boxes.append(f"{rel:<60}1 2 21 32")
    (root / "Anno" / "list_category_img.txt").write_text(
        "\n".join([str(len(imgs)), "image_name  category_label"] + imgs) + "\n")
    (root / "Eval" / "list_eval_partition.txt").write_text(
        "\n".join([str(len(parts)), "image_name  evaluation_status"] + parts) + "\n")
    (root / "Anno" / "list_bbox.txt").write_text(
        "\n".join([str(len(boxes)), "image_name  x_1  y_1  x_2  y_2"] + boxes) + "\n")
    return root


def test_reads_category_benchmark(tmp_path):
    make_deepfashion(tmp_path)
    catalog = build_catalog(Config(dataset="deepfashion", root=str(tmp_path)), progress=False)
    assert catalog.classes == ["Anorak", "Blouse", "Jeans"]  # Blazer has no image
    assert catalog.counts()[["train", "val", "test"]].values.tolist() == [[3, 3, 3]] * 3
    first = catalog.table.iloc[0]
    assert (first.box_x, first.box_y, first.box_w, first.box_h) == (1.0, 2.0, 20.0, 30.0)


def test_row_count_mismatch_is_clear(tmp_path):
    make_deepfashion(tmp_path)
    f = tmp_path / "Anno" / "list_category_img.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(["999"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="line 1 says 999 rows, the file has 27"):
        build_catalog(Config(dataset="deepfashion", root=str(tmp_path)), progress=False)


def test_category_out_of_range_is_clear(tmp_path):
    make_deepfashion(tmp_path)
    f = tmp_path / "Anno" / "list_category_img.txt"
    lines = f.read_text().splitlines()
    lines[2] = lines[2].rsplit(maxsplit=1)[0] + " 7"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="category 7, outside 1..4"):
        build_catalog(Config(dataset="deepfashion", root=str(tmp_path)), progress=False)


def test_malformed_line_names_file_and_line(tmp_path):
    make_deepfashion(tmp_path)
    f = tmp_path / "Eval" / "list_eval_partition.txt"
    lines = f.read_text().splitlines()
    lines[5] = "img/only_one_field.jpg"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt line 6: expected '<image> <split>'"):
        build_catalog(Config(dataset="deepfashion", root=str(tmp_path)), progress=False)
