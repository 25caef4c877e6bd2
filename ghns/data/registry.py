"""Dataset readers by name, and the one function that turns a config into a catalog."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, cast

import pandas as pd

from ghns.errors import DataError

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)


class ReaderResult(NamedTuple):
    """What a reader returns: rows (``image_id, path, class_name, split`` + ground truth),
    the class names in label order (``None``: sorted names), and facts for the catalog."""

    rows: pd.DataFrame
    classes: list[str] | None
    info: dict


Reader = Callable[[Path, object], ReaderResult]
READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        READERS[name] = fn
        return fn
    return deco


def get_reader(name: str) -> Reader:
    if name not in READERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(READERS))}")
    return READERS[name]


def build_catalog(cfg: Config, progress: bool = True):
    """Read ``cfg.dataset`` at ``cfg.root``, drop unusable images (counted), carve val."""
    from ghns.data.catalog import hold_out_classes, make_catalog, stratified_holdout, val_share
    from ghns.data.images import verify_images

    reader = get_reader(cfg.dataset)
    if cfg.root is None and cfg.dataset != "synthetic":
        raise DataError(f"--root is required for dataset {cfg.dataset!r}")
    # absolute paths: the catalog is read by Ray workers whose working directory differs
    root = Path(cfg.root).expanduser().resolve() if cfg.root is not None else None
    if root is not None and cfg.dataset != "synthetic" and not root.is_dir():
        raise DataError(f"dataset root not found: {root}")
    rows, classes, info = reader(cast(Path, root), cfg)  # None only for the synthetic default
    if rows.empty:
        raise DataError(f"{cfg.dataset}: no images found under {root}")
    rows, report = verify_images(rows, level=cfg.verify_images, progress=progress,
                                 max_pixels=cfg.max_image_pixels, max_bytes=cfg.max_image_bytes)
    if report.n_skipped:
        log.warning("%s: %s", cfg.dataset, report.summary())
    if report.duplicates_across_splits:
        log.warning("%s: %d groups of byte-identical images sit in different splits",
                    cfg.dataset, report.duplicates_across_splits)
    if rows.empty:
        raise DataError(f"{cfg.dataset}: every image under {root} was unusable ({report.summary()})")
    rows, classes, open_set = hold_out_classes(rows, classes, cfg.open_set_classes)
    if open_set is not None:
        info.setdefault("unknown", {})["open_set"] = open_set
        log.info("%s: %d classes held out as unknown (%d images): %s", cfg.dataset,
                 len(open_set["classes"]), len(open_set["images"]), ", ".join(open_set["classes"]))
    if "val" not in set(rows["split"]):
        share = val_share(cfg.val_fraction, cfg.min_val_images, int((rows["split"] == "train").sum()))
        rows = stratified_holdout(rows, share, cfg.seed, "train", "val")
        raised = (f" (--val-fraction {cfg.val_fraction:g} raised to hold at least "
                  f"{cfg.min_val_images} images)" if share != cfg.val_fraction else "")
        info["val"] = f"carved from train: {share:g} per class{raised}, seed {cfg.seed}"
    else:
        info["val"] = "the dataset's own validation split"
    skipped = dict(report.skipped)
    for reason, n in (info.pop("reader_skipped", None) or {}).items():  # skipped while listing files
        skipped[reason] = skipped.get(reason, 0) + n
        log.warning("%s: %d entries skipped (%s)", cfg.dataset, n, reason)
    info.update({"checked": report.checked, "skipped": skipped,
                 "skipped_paths": report.skipped_paths[:100],
                 "duplicate_groups": report.duplicate_groups[:100],
                 "duplicates_across_splits": report.duplicates_across_splits,
                 "verify_images": cfg.verify_images, "max_image_pixels": cfg.max_image_pixels,
                 "max_image_bytes": cfg.max_image_bytes})
    return make_catalog(cfg.dataset, rows, classes, info)
