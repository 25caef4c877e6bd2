"""The catalog: one table of every image of a dataset, whatever its native layout.

Columns (``CATALOG_SCHEMA``): ``image_id, path, label, class_name, split`` with split in
train | val | test, then optional ground truth where the dataset has it: the object box
``box_x, box_y, box_w, box_h`` (pixels, top-left origin), ``part_points`` (CUB keypoints as a flat
``[x, y, visible] * n`` list) and ``part_boxes`` (synthetic: three ``[x, y, w, h]`` boxes, flat).
The class list and the verification report travel in the Parquet file's metadata.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ghns.atomic import REDO, atomic_path, check_format, read_table
from ghns.errors import DataError, RunFileError

SPLITS = ("train", "val", "test")
CATALOG_FORMAT = 1  # in the file's metadata; a catalog of a newer format is refused in one line

CATALOG_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("path", pa.string()),
    ("label", pa.int64()),
    ("class_name", pa.string()),
    ("split", pa.string()),
    ("box_x", pa.float64()),
    ("box_y", pa.float64()),
    ("box_w", pa.float64()),
    ("box_h", pa.float64()),
    ("part_points", pa.list_(pa.float64())),
    ("part_boxes", pa.list_(pa.float64())),
])


@dataclass
class Catalog:
    """A dataset's images (``table``), its ordered class names and facts about how it was read."""

    dataset: str
    table: pd.DataFrame
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> pd.DataFrame:
        return self.table[self.table["split"] == name]

    def counts(self) -> pd.DataFrame:
        """Images per class (rows, in label order) and split (columns), with zero-filled gaps."""
        counts = (self.table.groupby(["label", "split"]).size().unstack(fill_value=0)
                  .reindex(index=range(len(self.classes)), columns=list(SPLITS), fill_value=0))
        counts.insert(0, "class_name", self.classes)
        return counts

    # -- persistence ----------------------------------------------------------------------
    def write(self, path: str | Path) -> None:
        """Write atomically: a reader never sees a half-written catalog."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(_with_all_columns(self.table), schema=CATALOG_SCHEMA,
                                     preserve_index=False)
        meta = {b"ghns": json.dumps({"dataset": self.dataset, "classes": self.classes,
                                     "info": self.info, "format": CATALOG_FORMAT}).encode()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)

    @classmethod
    def read(cls, path: str | Path) -> "Catalog":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"catalog not found: {path}")
        table = read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"ghns", b"null")) or {}
        if "classes" not in meta:
            raise RunFileError(f"{path}: not a ghns catalog (no class list in its metadata): {REDO}")
        check_format(path, "catalog", meta.get("format", 1), CATALOG_FORMAT)
        return cls(meta["dataset"], table.to_pandas(), meta["classes"], meta.get("info", {}))


def _with_all_columns(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for name in CATALOG_SCHEMA.names:
        if name not in df.columns:
            df[name] = None
    for name in ("box_x", "box_y", "box_w", "box_h"):
        df[name] = df[name].astype("float64")
    return df[CATALOG_SCHEMA.names]


def make_catalog(dataset: str, rows: pd.DataFrame, classes: list[str] | None = None,
                 info: dict[str, Any] | None = None) -> Catalog:
    """Assign contiguous labels (in ``classes`` order, default sorted names) and check splits.

    ``rows`` needs ``image_id, path, class_name, split``; optional ground-truth columns pass
    through. Classes without any image are dropped from the class list.
    """
    missing = {"image_id", "path", "class_name", "split"} - set(rows.columns)
    if missing:  # pragma: no cover - a reader bug, not a user error
        raise ValueError(f"reader returned no {sorted(missing)} column")
    bad = set(rows["split"]) - set(SPLITS)
    if bad:
        raise DataError(f"{dataset}: unknown split name(s) {sorted(bad)}")
    if rows["image_id"].duplicated().any():
        dup = rows.loc[rows["image_id"].duplicated(), "image_id"].iloc[0]
        raise DataError(f"{dataset}: image id {dup} appears more than once")
    present = set(rows["class_name"])
    classes = [c for c in (classes if classes is not None else sorted(present)) if c in present]
    unknown = present - set(classes)
    if unknown:
        raise DataError(f"{dataset}: images of classes not in the class list: {sorted(unknown)[:3]}")
    index = {name: i for i, name in enumerate(classes)}
    table = rows.copy()
    table["label"] = table["class_name"].map(index).astype("int64")
    table["image_id"] = table["image_id"].astype("int64")
    table = table.sort_values("image_id").reset_index(drop=True)
    return Catalog(dataset, _with_all_columns(table), classes, dict(info or {}))


MAX_RAISED_VAL_SHARE = 0.25


def val_share(fraction: float, min_images: int, n_train: int) -> float:
    """The share of each class's train images to carve out as val: ``fraction``, raised where it
    would carve fewer than ``min_images`` of the ``n_train`` images (fusion and the other val
    choices are noise on a few dozen images) to ``min_images / n_train`` rounded up to 0.01, but
    never above ``MAX_RAISED_VAL_SHARE``; a larger ``fraction`` given is kept."""
    if fraction <= 0 or min_images <= 0 or n_train <= 0:
        return fraction
    needed = -(-100 * min_images // n_train) / 100  # ceil to 0.01 in integers: 150 / 1500 -> 0.1
    return max(fraction, min(needed, MAX_RAISED_VAL_SHARE))


def stratified_holdout(rows: pd.DataFrame, fraction: float, seed: int,
                       source: str = "train", target: str = "val") -> pd.DataFrame:
    """Move ``fraction`` of each class's ``source`` rows to split ``target`` (seeded).

    Per class, ``round(fraction * n)`` rows move, at least one when the class has two or more
    source rows and ``fraction > 0``, and never the class's last source row. The draw depends
    only on the seed, the class name and its image ids: not on row order or other classes.
    """
    rows = rows.copy()
    if fraction <= 0:
        return rows
    src = rows[rows["split"] == source].sort_values("image_id")
    moved: list[int] = []
    for name, group in src.groupby("class_name"):
        n = len(group)
        k = min(n - 1, max(1, int(round(fraction * n)))) if n >= 2 else 0
        if k:
            rng = np.random.default_rng([seed, zlib.crc32(str(name).encode())])
            moved.extend(group["image_id"].to_numpy()[rng.permutation(n)[:k]].tolist())
    rows.loc[rows["image_id"].isin(moved), "split"] = target
    return rows


def open_set_classes(names: list[str], k: int) -> list[str]:
    """The ``k`` classes held out as unknown (open set): the names with the smallest CRC-32 of
    their UTF-8 bytes (ties by name), a fixed rule that needs no seed and no dataset name, and
    whose first k of a larger k are the set for k. At least two classes must stay known."""
    if k <= 0:
        return []
    if k > len(names) - 2:
        raise DataError(f"--open-set-classes {k} leaves fewer than 2 of {len(names)} classes to train on")
    return sorted(sorted(set(names)), key=lambda n: zlib.crc32(n.encode()))[:k]


def hold_out_classes(rows: pd.DataFrame, classes: list[str] | None, k: int
                     ) -> tuple[pd.DataFrame, list[str] | None, dict[str, Any] | None]:
    """``rows`` less the images of the ``open_set_classes`` (every split), the class list less
    them, and the catalog's ``unknown["open_set"]`` entry (rule, classes, their images' paths,
    class names and splits: a held-out class's test images are unknowns of test, its other
    images unknowns of val, where choices are made); unchanged with ``k == 0``."""
    if k <= 0:
        return rows, classes, None
    held = open_set_classes(sorted(set(rows["class_name"])), k)
    out = rows["class_name"].isin(held).to_numpy()
    images = rows.loc[out, ["path", "class_name", "split"]].copy()
    images["split"] = np.where(images["split"] == "test", "test", "val")  # their train images: val
    entry = {"rule": f"the {k} class names with the smallest CRC-32; their test images test, the "
                     "rest val", "classes": held, "images": images.to_dict("records")}
    kept = None if classes is None else [c for c in classes if c not in set(held)]
    return rows.loc[~out].reset_index(drop=True), kept, entry
