"""Any torchvision ``ImageFolder`` tree: ``root/{train,val?,test}/<class>/<image>``, or one
``root/<class>/<image>`` folder split into train and test by a seeded, stratified ratio.

Scanning uses torchvision's own ``find_classes`` / ``make_dataset``, so the same files count as
images here as in ``torchvision.datasets.ImageFolder``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ghns.data.catalog import stratified_holdout
from ghns.data.registry import ReaderResult, register_reader
from ghns.errors import DataError

# The test split of a one-folder tree is a property of the dataset, not of the run: a fixed
# seed keeps it the same for every run, so runs with different --seed share one test set.
HOLDOUT_SEED = 0


def _scan(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError:
        raise DataError(f"imagefolder: no class folders in {folder}") from None
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    return classes, [(path, classes[idx]) for path, idx in samples]


@register_reader("imagefolder")
def read_imagefolder(root: Path, cfg=None) -> ReaderResult:
    test_fraction = getattr(cfg, "test_fraction", 0.25)
    splits = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if splits and "train" not in splits:
        raise DataError(f"imagefolder: {root} has {sorted(splits)} but no train/ folder")
    if splits and "test" not in splits:
        raise DataError(f"imagefolder: {root} has train/ but no test/ folder")
    records, classes = [], None
    if splits:
        classes, _ = _scan(splits["train"])
        for split, folder in splits.items():
            split_classes, samples = _scan(folder)
            extra = set(split_classes) - set(classes)
            if extra:
                raise DataError(f"imagefolder: {folder} has classes not in train/: {sorted(extra)[:3]}")
            records += [(path, name, split) for path, name in samples]
        layout = "/".join(splits)
    else:
        classes, samples = _scan(root)
        records = [(path, name, "train") for path, name in samples]
        layout = f"one folder, test_fraction {test_fraction:g} per class (seed {HOLDOUT_SEED})"
    df = pd.DataFrame(records, columns=["path", "class_name", "split"])
    df.insert(0, "image_id", range(1, len(df) + 1))
    if not splits:
        df = stratified_holdout(df, test_fraction, HOLDOUT_SEED, "train", "test")
    return ReaderResult(df, classes, {"root": str(root), "layout": layout})
