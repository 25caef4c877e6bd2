"""DeepFashion, Category and Attribute Prediction Benchmark.

``Anno/list_category_cloth.txt`` (count, header, ``name type``), ``Anno/list_category_img.txt``
(count, header, ``img/... label`` with 1-based labels), ``Anno/list_bbox.txt`` (count, header,
``img/... x1 y1 x2 y2``), ``Eval/list_eval_partition.txt`` (count, header, ``img/... train|val|test``);
images under ``root/img/``. The dataset's own val split is kept. Categories that no image uses
(the benchmark lists 50, 46 carry images) are left out of the class list.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ghns.data.labels import as_dict, read_rows
from ghns.data.registry import ReaderResult, register_reader
from ghns.errors import DataError


@register_reader("deepfashion")
def read_deepfashion(root: Path, cfg=None) -> ReaderResult:
    anno, ev = root / "Anno", root / "Eval"
    cloth = read_rows(anno / "list_category_cloth.txt", [("name", "str"), ("type", "int")],
                      skip=1, expected_count_line=True)
    names = [name for name, _ in cloth]
    labels = as_dict(read_rows(anno / "list_category_img.txt", [("image", "str"), ("label", "int")],
                               skip=1, expected_count_line=True),
                     anno / "list_category_img.txt", "image")
    partition = as_dict(read_rows(ev / "list_eval_partition.txt", [("image", "str"), ("split", "str")],
                                  skip=1, expected_count_line=True),
                        ev / "list_eval_partition.txt", "image")
    records = []
    for image_id, (image, split) in enumerate(partition.items(), start=1):
        if image not in labels:
            raise DataError(f"deepfashion: {image} is in list_eval_partition.txt but not in "
                            f"list_category_img.txt")
        label = labels[image]
        if not 1 <= label <= len(names):
            raise DataError(f"deepfashion: {image} has category {label}, outside 1..{len(names)} "
                            f"of list_category_cloth.txt")
        records.append({"image_id": image_id, "path": str(root / image),
                        "class_name": names[label - 1], "split": split})
    df = pd.DataFrame(records)
    box_file = anno / "list_bbox.txt"
    if box_file.is_file():
        boxes = as_dict(read_rows(box_file, [("image", "str"), ("x1", "float"), ("y1", "float"),
                                             ("x2", "float"), ("y2", "float")],
                                  skip=1, expected_count_line=True), box_file, "image")
        got = [boxes.get(str(Path(p).relative_to(root))) for p in df["path"]]
        df["box_x"] = [b[0] if b else float("nan") for b in got]
        df["box_y"] = [b[1] if b else float("nan") for b in got]
        df["box_w"] = [b[2] - b[0] if b else float("nan") for b in got]
        df["box_h"] = [b[3] - b[1] if b else float("nan") for b in got]
    return ReaderResult(df, names, {"root": str(root)})
