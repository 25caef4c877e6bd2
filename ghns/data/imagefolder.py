"""Any torchvision ``ImageFolder`` tree: ``root/{train,val?,test}/<class>/<image>``, or one
``root/<class>/<image>`` folder split into train and test by a seeded, stratified ratio.

The same files count as images here as in ``torchvision.datasets.ImageFolder`` (its extensions,
case-insensitive), with two differences that keep a catalogue honest: symbolic links are followed
but every real folder is entered once and every real file counted once (a link loop such as
``class0/loop -> ..`` cannot multiply images or give one class's images to another), and a file or
folder whose name is not valid UTF-8 is skipped and counted (``skipped`` in the catalog's
metadata, ``undecodable name``), never a crash.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd
from torchvision.datasets.folder import IMG_EXTENSIONS

from ghns.data.catalog import stratified_holdout
from ghns.data.registry import ReaderResult, register_reader
from ghns.errors import DataError

# The test split of a one-folder tree is a property of the dataset, not of the run: a fixed
# seed keeps it the same for every run, so runs with different --seed share one test set.
HOLDOUT_SEED = 0


def _decodable(name: str) -> bool:
    try:
        name.encode("utf-8")  # an undecodable byte became a lone surrogate (os.fsdecode)
    except UnicodeEncodeError:
        return False
    return True


def _elsewhere_in(real: str, tree: str, own: str) -> bool:
    """Whether the real path ``real`` lies in the split folder ``tree`` (or above it) but outside
    the class's own real folder ``own``: reached through a link into another class or upwards."""
    def inside(a: str, b: str) -> bool:
        return a == b or a.startswith(b.rstrip(os.sep) + os.sep)
    return not inside(real, own) and (inside(real, tree) or inside(tree, real))


def _scan(folder: Path, skipped: Counter) -> tuple[list[str], list[tuple[str, str]]]:
    """Class folders of ``folder`` (sorted) and every image under each, once per real file."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        raise DataError(f"imagefolder: no class folders in {folder}") from None
    classes = []
    for entry in entries:
        if entry.is_dir():
            if _decodable(entry.name):
                classes.append(entry.name)
            else:
                skipped["undecodable name"] += 1
    if not classes:
        raise DataError(f"imagefolder: no class folders in {folder}")
    samples: list[tuple[str, str]] = []
    seen_files: set[str] = set()
    tree = os.path.realpath(folder)
    for name in classes:
        own = os.path.realpath(folder / name)
        seen_dirs: set[str] = set()
        for top, dirs, files in os.walk(folder / name, followlinks=True):
            real = os.path.realpath(top)
            if real in seen_dirs or _elsewhere_in(real, tree, own):
                dirs[:] = []  # a loop, a second way in, or a link into another class or above
                skipped["symlink loop or repeat"] += 1
                continue
            seen_dirs.add(real)
            dirs.sort()
            for bad in [d for d in dirs if not _decodable(d)]:
                dirs.remove(bad)
                skipped["undecodable name"] += 1
            for file in sorted(files):
                if not file.lower().endswith(IMG_EXTENSIONS):
                    continue
                if not _decodable(file) or not _decodable(top):
                    skipped["undecodable name"] += 1
                    continue
                path = os.path.join(top, file)
                key = os.path.realpath(path)
                if key in seen_files or _elsewhere_in(key, tree, own):  # reached twice, or another class's
                    skipped["symlink loop or repeat"] += 1
                    continue
                seen_files.add(key)
                samples.append((path, name))
    return classes, samples


@register_reader("imagefolder")
def read_imagefolder(root: Path, cfg=None) -> ReaderResult:
    test_fraction = getattr(cfg, "test_fraction", 0.25)
    splits = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if splits and "train" not in splits:
        raise DataError(f"imagefolder: {root} has {sorted(splits)} but no train/ folder")
    if splits and "test" not in splits:
        raise DataError(f"imagefolder: {root} has train/ but no test/ folder")
    records, classes = [], None
    skipped: Counter = Counter()
    if splits:
        classes, _ = _scan(splits["train"], Counter())
        for split, folder in splits.items():
            split_classes, samples = _scan(folder, skipped)
            extra = set(split_classes) - set(classes)
            if extra:
                raise DataError(f"imagefolder: {folder} has classes not in train/: {sorted(extra)[:3]}")
            records += [(path, name, split) for path, name in samples]
        layout = "/".join(splits)
    else:
        classes, samples = _scan(root, skipped)
        records = [(path, name, "train") for path, name in samples]
        layout = f"one folder, test_fraction {test_fraction:g} per class (seed {HOLDOUT_SEED})"
    df = pd.DataFrame(records, columns=["path", "class_name", "split"])
    df.insert(0, "image_id", range(1, len(df) + 1))
    if not splits:
        df = stratified_holdout(df, test_fraction, HOLDOUT_SEED, "train", "test")
    return ReaderResult(df, classes, {"root": str(root), "layout": layout, "reader_skipped": dict(skipped)})
