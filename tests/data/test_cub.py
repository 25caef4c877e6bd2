from __future__ import annotations

from pathlib import Path

import pytest

from ghns.config import Config
from ghns.data import build_catalog
from ghns.data.cub import N_PARTS, read_cub
from ghns.errors import DataError
from tests.conftest import write_image

CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def make_cub(root: Path, per_class: int = 6, parts: bool = True, boxes: bool = True) -> Path:
    """A CUB_200_2011 tree in the official format: 3 classes, half train / half test."""
    cub = root / "CUB_200_2011"
    images, labels, split, bbox, locs = [], [], [], [], []
    image_id = 0
    for c, name in enumerate(CLASSES, start=1):
        for k in range(per_class):
            image_id += 1
            rel = f"{name}/{name[4:]}_{k:04d}_{image_id}.jpg"
            write_image(cub / "images" / rel, seed=image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {1 if k % 2 == 0 else 0}")
            bbox.append(f"{image_id} 1.0 2.0 30.0 20.0")
            for p in range(1, N_PARTS + 1):
                visible = 1 if p % 3 else 0
                locs.append(f"{image_id} {p} {p * 2.0 if visible else 0.0} {p * 1.0 if visible else 0.0} {visible}")
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "classes.txt").write_text("\n".join(f"{i} {n}" for i, n in enumerate(CLASSES, 1)) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    if boxes:
        (cub / "bounding_boxes.txt").write_text("\n".join(bbox) + "\n")
    if parts:
        (cub / "parts").mkdir()
        (cub / "parts" / "part_locs.txt").write_text("\n".join(locs) + "\n")
        (cub / "parts" / "parts.txt").write_text(
            "\n".join(f"{p} part name {p}" for p in range(1, N_PARTS + 1)) + "\n")
    return cub


def test_reads_official_layout(tmp_path):
    cub = make_cub(tmp_path)
    catalog = build_catalog(Config(dataset="cub", root=str(tmp_path), val_fraction=0.34), progress=False)
    t = catalog.table
    assert catalog.classes == CLASSES
    assert len(t) == 18 and t["image_id"].tolist() == list(range(1, 19))
    assert t.groupby("class_name")["label"].first().to_dict() == {n: i for i, n in enumerate(CLASSES)}
    counts = catalog.counts()
    assert counts["test"].tolist() == [3, 3, 3]
    assert counts["val"].tolist() == [1, 1, 1] and counts["train"].tolist() == [2, 2, 2]
    assert t[["box_x", "box_y", "box_w", "box_h"]].iloc[0].tolist() == [1.0, 2.0, 30.0, 20.0]
    points = t["part_points"].iloc[0]
    assert len(points) == 3 * N_PARTS
    assert points[0:3] == [2.0, 1.0, 1.0] and points[6:9] == [0.0, 0.0, 0.0]  # part 3 invisible
    assert catalog.info["part_names"][0] == "part name 1"
    assert all(Path(p).is_file() for p in t["path"])
    assert Path(catalog.info["root"]) == cub


def test_parts_and_boxes_are_optional(tmp_path):
    make_cub(tmp_path, parts=False, boxes=False)
    rows, classes, info = read_cub(tmp_path)
    assert "part_points" not in rows.columns and "box_x" not in rows.columns
    assert "part_names" not in info


def test_malformed_line_names_file_and_line(tmp_path):
    cub = make_cub(tmp_path)
    lines = (cub / "image_class_labels.txt").read_text().splitlines()
    lines[4] = "5 three"
    (cub / "image_class_labels.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"image_class_labels.txt line 5: .*'5 three'"):
        read_cub(cub)


def test_unknown_class_and_missing_label_are_errors(tmp_path):
    cub = make_cub(tmp_path)
    labels = (cub / "image_class_labels.txt").read_text().splitlines()
    labels[0] = "1 9"
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    with pytest.raises(DataError, match="class 9"):
        read_cub(cub)
    make_cub(tmp_path / "b")
    split = tmp_path / "b" / "CUB_200_2011" / "train_test_split.txt"
    split.write_text("\n".join(split.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(DataError, match="image 1 has no line in train_test_split.txt"):
        read_cub(tmp_path / "b")


def test_missing_root_file_is_clear(tmp_path):
    with pytest.raises(DataError, match="no images.txt"):
        read_cub(tmp_path)


@pytest.mark.shared_data
def test_shared_cub50(shared_data):
    root = shared_data / "cub50-dev" / "CUB_200_2011"
    catalog = build_catalog(Config(dataset="cub", root=str(root)), progress=False)
    counts = catalog.counts()
    assert len(catalog.classes) == 50
    assert counts["test"].sum() == 1452
    assert counts["train"].sum() + counts["val"].sum() == 1500
    assert (counts["val"] >= 1).all()
    assert catalog.info["skipped"] == {}
