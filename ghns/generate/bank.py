"""The bank of hard negatives: ``negatives/class_NNNNN.parquet``, one shard per class.

Per hard negative: the reference image and its class, for each part the source image and class
(the reference itself where the part was kept), which parts were swapped, the neighbour rank of
each swapped part, the FilterNet score for the reference class, and the set's embedding (the
three part embeddings, concatenated). The provenance lets stage 3 rebuild the set with any later
backbone. Each shard is written atomically and carries its class's statistics in its metadata, so
an interrupted run resumes by skipping the classes whose shard exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ghns.atomic import atomic_path, read_table
from ghns.models import N_PARTS


def shard_path(folder: Path, target: int) -> Path:
    return folder / f"class_{target:05d}.parquet"


def write_shard(folder: Path, target: int, image_ids: np.ndarray, labels: np.ndarray,
                refs: np.ndarray, sources: np.ndarray, ranks: np.ndarray, scores: np.ndarray,
                embeddings: np.ndarray, stats: dict[str, Any]) -> Path:
    """``refs``/``sources`` index the train arrays ``image_ids``/``labels``/``embeddings``."""
    n = len(refs)
    cols: dict[str, Any] = {
        "ref_image": pa.array(image_ids[refs].astype(np.int64)),
        "class": pa.array(np.full(n, target, np.int64)),
    }
    for k in range(N_PARTS):
        cols[f"part{k + 1}_image"] = pa.array(image_ids[sources[:, k]].astype(np.int64) if n else
                                              np.zeros(0, np.int64))
        cols[f"part{k + 1}_class"] = pa.array(labels[sources[:, k]].astype(np.int64) if n else
                                              np.zeros(0, np.int64))
    swapped = ranks >= 0
    cols["swapped"] = pa.array(["".join("1" if b else "0" for b in row) for row in swapped],
                               type=pa.string())  # typed even when empty (a class with no negatives)
    cols["n_swapped"] = pa.array(swapped.sum(axis=1).astype(np.int8) if n else np.zeros(0, np.int8))
    for k in range(N_PARTS):
        cols[f"rank{k + 1}"] = pa.array(ranks[:, k].astype(np.int32) if n else np.zeros(0, np.int32))
    cols["score"] = pa.array(scores.astype(np.float64))
    dim = embeddings.shape[1] * embeddings.shape[2]
    sets = (np.stack([embeddings[sources[:, k], k] for k in range(N_PARTS)], 1).reshape(n, dim)
            if n else np.zeros((0, dim), np.float32))
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(
        pa.array(sets.reshape(-1).astype(np.float32)), dim)
    table = pa.table(cols).replace_schema_metadata({b"ghns_class_stats": json.dumps(stats).encode()})
    folder.mkdir(parents=True, exist_ok=True)
    path = shard_path(folder, target)
    # no dictionary and no statistics for the float vectors: they cost 8x the write and serve no
    # reader (measured: 47 ms -> 6 ms for a shard of 150 sets at D = 512)
    small = [c for c in table.column_names if c != "embedding"]
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, use_dictionary=small, write_statistics=small)
    return path


def shard_stats(path: Path) -> dict[str, Any]:
    return json.loads(pq.read_schema(path).metadata[b"ghns_class_stats"])


def read_bank(folder: Path, with_embeddings: bool = True) -> tuple[pd.DataFrame, np.ndarray | None]:
    """All shards in class order: (provenance table, set embeddings (M, 3*D) or None)."""
    paths = sorted(folder.glob("class_*.parquet"))
    if not paths:
        return pd.DataFrame(), None
    tables = [read_table(p) for p in paths]
    # shards written before empty ones were typed may hold a null-typed column: let them promote
    table = pa.concat_tables([t for t in tables if t.num_rows] or tables[:1], promote_options="permissive")
    meta = table.drop(["embedding"]).to_pandas()
    if not with_embeddings:
        return meta, None
    col = table.column("embedding").combine_chunks()
    emb = col.values.to_numpy(zero_copy_only=False).reshape(len(meta), col.type.list_size).copy()
    return meta, emb
