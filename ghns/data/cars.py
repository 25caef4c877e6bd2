"""Stanford Cars through ``torchvision.datasets.StanfordCars`` (196 classes).

Layout (torchvision's): ``<root>/stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat,
cars_train/, cars_test/, cars_test_annos_withlabels.mat}``; ``root`` may also be the
``stanford_cars`` folder itself. torchvision reads images and labels; the object boxes come from
the same annotation ``.mat`` files (torchvision does not expose them).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ghns.data.registry import ReaderResult, register_reader
from ghns.errors import DataError


def _base(root: Path) -> Path:
    if (root / "devkit").is_dir():
        return root.parent  # root is the stanford_cars folder itself
    return root


@register_reader("cars")
def read_cars(root: Path, cfg=None) -> ReaderResult:
    import scipy.io as sio
    from torchvision.datasets import StanfordCars

    base = _base(root)
    records, classes = [], None
    for split in ("train", "test"):
        try:
            ds = StanfordCars(str(base), split=split, download=False)
        except RuntimeError as exc:
            raise DataError(f"cars: {exc} (looked for {base / 'stanford_cars'}: devkit/, "
                            f"cars_{split}/ and the annotation .mat files)") from None
        classes = list(ds.classes)
        annos = sio.loadmat(str(ds._annotations_mat_path), squeeze_me=True)["annotations"]
        annos = [annos] if getattr(annos, "ndim", 1) == 0 else annos
        boxes = {str(a["fname"]): (float(a["bbox_x1"]), float(a["bbox_y1"]),
                                   float(a["bbox_x2"]), float(a["bbox_y2"])) for a in annos}
        for path, label in ds._samples:  # torchvision's own parse of the .mat annotations
            x1, y1, x2, y2 = boxes[Path(path).name]
            records.append({"path": path, "class_name": classes[label], "split": split,
                            "box_x": x1 - 1, "box_y": y1 - 1, "box_w": x2 - x1 + 1,
                            "box_h": y2 - y1 + 1})
    df = pd.DataFrame(records)
    df.insert(0, "image_id", range(1, len(df) + 1))
    return ReaderResult(df, classes, {"root": str(base / "stanford_cars")})
