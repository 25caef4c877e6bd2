"""FGVC-Aircraft at the variant level (100 classes) through ``torchvision.datasets.FGVCAircraft``.

Layout (torchvision's): ``<root>/fgvc-aircraft-2013b/data/{variants.txt,
images_variant_{train,val,test}.txt, images_box.txt, images/}``; ``root`` may also be the
``fgvc-aircraft-2013b`` folder itself. The dataset's own train / val / test splits are kept (val is
not carved from train). Boxes come from ``images_box.txt`` (``name xmin ymin xmax ymax``, 1-based).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ghns.data.labels import as_dict, read_rows
from ghns.data.registry import ReaderResult, register_reader
from ghns.errors import DataError


def _base(root: Path) -> Path:
    if (root / "data" / "variants.txt").is_file():
        return root.parent  # root is the fgvc-aircraft-2013b folder itself
    return root


@register_reader("aircraft")
def read_aircraft(root: Path, cfg=None) -> ReaderResult:
    from torchvision.datasets import FGVCAircraft

    base = _base(root)
    data = base / "fgvc-aircraft-2013b" / "data"
    records, classes = [], None
    for split in ("train", "val", "test"):
        if not (data / f"images_variant_{split}.txt").is_file():
            raise DataError(f"aircraft: missing {data / f'images_variant_{split}.txt'}")
        try:
            ds = FGVCAircraft(str(base), split=split, annotation_level="variant", download=False)
        except (RuntimeError, ValueError) as exc:
            raise DataError(f"aircraft: cannot read split {split!r} under {base}: {exc}") from None
        except KeyError as exc:
            raise DataError(f"aircraft: images_variant_{split}.txt names variant {exc} "
                            f"that is not in variants.txt") from None
        classes = list(ds.classes)
        records += [{"path": path, "class_name": classes[label], "split": split}
                    for path, label in zip(ds._image_files, ds._labels)]
    df = pd.DataFrame(records)
    df.insert(0, "image_id", range(1, len(df) + 1))
    box_file = data / "images_box.txt"
    if box_file.is_file():
        boxes = as_dict(read_rows(box_file, [("name", "str"), ("xmin", "float"), ("ymin", "float"),
                                             ("xmax", "float"), ("ymax", "float")]),
                        box_file, "image")
        names = [Path(p).stem for p in df["path"]]
        got = [boxes.get(n) for n in names]
        df["box_x"] = [b[0] - 1 if b else float("nan") for b in got]
        df["box_y"] = [b[1] - 1 if b else float("nan") for b in got]
        df["box_w"] = [b[2] - b[0] + 1 if b else float("nan") for b in got]
        df["box_h"] = [b[3] - b[1] + 1 if b else float("nan") for b in got]
    return ReaderResult(df, classes, {"root": str(base / "fgvc-aircraft-2013b")})
