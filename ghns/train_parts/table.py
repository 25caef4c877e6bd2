"""The embedding table: one row per image, one fixed-size float32 list per part.

``embeddings.parquet``: ``image_id, split, label, part1, part2, part3`` (unit-length vectors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ghns.atomic import atomic_path, read_table


def write_embeddings(path: Path, meta: pd.DataFrame, embeddings: np.ndarray) -> None:
    """``meta``: image_id, split, label per row; ``embeddings``: (N, P, D) float32."""
    n, parts, dim = embeddings.shape
    cols = {"image_id": pa.array(meta["image_id"].to_numpy(np.int64)),
            "split": pa.array(meta["split"].astype(str).tolist()),
            "label": pa.array(meta["label"].to_numpy(np.int64))}
    for k in range(parts):
        flat = pa.array(np.ascontiguousarray(embeddings[:, k]).reshape(-1).astype(np.float32))
        cols[f"part{k + 1}"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(cols), tmp)


def read_embeddings(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(meta with image_id, split, label; embeddings (N, P, D) float32)."""
    table = read_table(path)
    meta = table.select(["image_id", "split", "label"]).to_pandas()
    parts = sorted((c for c in table.column_names if c.startswith("part")), key=lambda c: int(c[4:]))
    arrays = []
    for name in parts:
        col = table.column(name).combine_chunks()
        dim = col.type.list_size
        arrays.append(col.values.to_numpy(zero_copy_only=False).reshape(-1, dim))
    return meta, np.stack(arrays, axis=1).astype(np.float32, copy=False)
