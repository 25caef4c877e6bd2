"""CUB-200-2011 in its official layout (``CUB_200_2011/``).

Required: ``images.txt``, ``classes.txt``, ``image_class_labels.txt``, ``train_test_split.txt``.
Optional: ``bounding_boxes.txt`` (object boxes) and ``parts/part_locs.txt`` with
``parts/parts.txt`` (15 keypoints per image; stored flat as ``[x, y, visible] * 15``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ghns.data.labels import as_dict, read_rows
from ghns.data.registry import ReaderResult, register_reader
from ghns.errors import DataError

N_PARTS = 15


def find_cub_root(root: Path) -> Path:
    """The folder holding ``images.txt``: ``root`` itself or its ``CUB_200_2011`` child."""
    for candidate in (root, root / "CUB_200_2011"):
        if (candidate / "images.txt").is_file():
            return candidate
    raise DataError(f"cub: no images.txt under {root} (expected the official CUB_200_2011 layout)")


@register_reader("cub")
def read_cub(root: Path, cfg=None) -> ReaderResult:
    root = find_cub_root(root)
    images = as_dict(read_rows(root / "images.txt", [("image_id", "int"), ("path", "str")],
                               rest_is_text=True), root / "images.txt", "image id")
    class_rows = read_rows(root / "classes.txt", [("class_id", "int"), ("name", "str")],
                           rest_is_text=True)
    classes = as_dict(class_rows, root / "classes.txt", "class id")
    labels = as_dict(read_rows(root / "image_class_labels.txt",
                               [("image_id", "int"), ("class_id", "int")]),
                     root / "image_class_labels.txt", "image id")
    is_train = as_dict(read_rows(root / "train_test_split.txt",
                                 [("image_id", "int"), ("is_training_image", "int")]),
                       root / "train_test_split.txt", "image id")

    rows = []
    for image_id, rel in images.items():
        if image_id not in labels:
            raise DataError(f"cub: image {image_id} has no line in image_class_labels.txt")
        if image_id not in is_train:
            raise DataError(f"cub: image {image_id} has no line in train_test_split.txt")
        class_id = labels[image_id]
        if class_id not in classes:
            raise DataError(f"cub: image {image_id} has class {class_id}, not in classes.txt")
        if is_train[image_id] not in (0, 1):
            raise DataError(f"cub: train_test_split.txt: image {image_id} has "
                            f"is_training_image={is_train[image_id]}, expected 0 or 1")
        rows.append({"image_id": image_id, "path": str(root / "images" / rel),
                     "class_name": classes[class_id],
                     "split": "train" if is_train[image_id] == 1 else "test"})
    df = pd.DataFrame(rows)

    boxes_file = root / "bounding_boxes.txt"
    if boxes_file.is_file():
        boxes = as_dict(read_rows(boxes_file, [("image_id", "int"), ("x", "float"),
                                               ("y", "float"), ("w", "float"), ("h", "float")]),
                        boxes_file, "image id")
        for i, col in enumerate(("box_x", "box_y", "box_w", "box_h")):
            df[col] = [boxes[k][i] if k in boxes else float("nan") for k in df["image_id"]]

    info: dict[str, Any] = {"root": str(root)}
    parts_file = root / "parts" / "part_locs.txt"
    if parts_file.is_file():
        df["part_points"] = _read_part_points(parts_file, df["image_id"].tolist())
        names_file = root / "parts" / "parts.txt"
        if names_file.is_file():
            names = read_rows(names_file, [("part_id", "int"), ("name", "str")], rest_is_text=True)
            info["part_names"] = [name for _, name in sorted(names)]
    ordered = [name for _, name in sorted(class_rows)]
    return ReaderResult(df, ordered, info)


def _read_part_points(path: Path, image_ids: list[int]) -> list[list[float]]:
    rows = read_rows(path, [("image_id", "int"), ("part_id", "int"), ("x", "float"),
                            ("y", "float"), ("visible", "float")])
    points = {i: [0.0] * (3 * N_PARTS) for i in image_ids}
    for image_id, part_id, x, y, visible in rows:
        if not 1 <= part_id <= N_PARTS:
            raise DataError(f"{path}: part id {part_id} outside 1..{N_PARTS}")
        if image_id in points:
            points[image_id][3 * (part_id - 1): 3 * part_id] = [x, y, visible]
    return [points[i] for i in image_ids]
