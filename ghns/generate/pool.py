"""Where the generator reads part embeddings from: memory (tests, benchmarks) or a class-sorted
file on disk (the stage's actors), through one small interface.

A generator actor needs, for one class, the embeddings of that class's references and of the
replacement parts it may swap in, never the whole train split. ``PartStore`` keeps the train
split's part embeddings in a raw float32 file sorted by class (``parts.f32``, (N, P, D)), with
each class's row range; an actor reads a class's block with one positioned read (``os.pread``,
not a memory map, so what it read leaves its resident set when it is dropped) and keeps the last
``cache_classes`` blocks. ``ArrayPool`` is the same interface over arrays in memory.

Rows are positions in class-sorted order (a class's rows are contiguous). ``write`` streams
``embeddings.parquet`` in record batches when its train rows are already class-ordered (catalogs
are), so the driver never holds the whole split either; otherwise it sorts in memory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ghns.atomic import temporary_name


class ArrayPool:
    """Part embeddings in memory: ``embeddings`` (N, P, D) float32 and ``labels`` (N,); rows are
    the arrays' own indices (they need not be class-sorted)."""

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray, n_classes: int | None = None,
                 image_ids: np.ndarray | None = None) -> None:
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n_classes = int(n_classes if n_classes is not None else
                             (self.labels.max() + 1 if len(self.labels) else 0))
        self.image_ids = np.arange(len(self.labels)) if image_ids is None else np.asarray(image_ids)
        _, self.parts, self.dim = self.embeddings.shape
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.n_classes + 1))
        self._members = [order[bounds[c]:bounds[c + 1]] for c in range(self.n_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def class_rows(self, c: int) -> np.ndarray:
        return self._members[c]

    def class_block(self, c: int) -> np.ndarray:
        """(n_c, P, D) part embeddings of class ``c``'s images, in ``class_rows`` order."""
        return self.embeddings[self._members[c]]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), P, D) part embeddings of ``rows``."""
        return self.embeddings[np.asarray(rows, dtype=np.int64)]

    def take_part(self, rows: np.ndarray, part: int) -> np.ndarray:
        """(len(rows), D) embeddings of part ``part`` of ``rows``."""
        return self.embeddings[np.asarray(rows, dtype=np.int64), part]


class PartStore:
    """The train split's part embeddings in a class-sorted file (see the module docstring)."""

    DATA, INDEX = "parts.f32", "rows.npz"

    def __init__(self, folder: str | Path, cache_classes: int = 64) -> None:
        self.folder = Path(folder)
        with np.load(self.folder / self.INDEX) as z:
            self.labels = z["labels"].astype(np.int64)
            self.image_ids = z["image_ids"].astype(np.int64)
            self.offsets = z["offsets"].astype(np.int64)
            self.parts, self.dim = (int(v) for v in z["shape"])
        self.n_classes = len(self.offsets) - 1
        self._row_bytes = self.parts * self.dim * 4
        self._fd = os.open(self.folder / self.DATA, os.O_RDONLY)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_classes = cache_classes
        self.bytes_read = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __getstate__(self):  # reopen the file in another process
        return {"folder": self.folder, "cache_classes": self.cache_classes}

    def __setstate__(self, state) -> None:
        PartStore.__init__(self, state["folder"], state["cache_classes"])

    def class_rows(self, c: int) -> np.ndarray:
        return np.arange(self.offsets[c], self.offsets[c + 1])

    def _read(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        buf = os.pread(self._fd, n * self._row_bytes, start * self._row_bytes)
        if len(buf) != n * self._row_bytes:
            raise OSError(f"{self.folder / self.DATA}: short read (truncated file?)")
        self.bytes_read += len(buf)
        return np.frombuffer(buf, dtype=np.float32).reshape(n, self.parts, self.dim)

    def class_block(self, c: int) -> np.ndarray:
        block = self._cache.get(c)
        if block is None:
            block = self._read(int(self.offsets[c]), int(self.offsets[c + 1]))
            self._cache[c] = block
            if len(self._cache) > self.cache_classes:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(c)
        return block

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.parts, self.dim), np.float32)
        if len(rows) == 0:
            return out
        cls = self.labels[rows]
        for c in np.unique(cls):
            at = np.nonzero(cls == c)[0]
            out[at] = self.class_block(int(c))[rows[at] - self.offsets[c]]
        return out

    def take_part(self, rows: np.ndarray, part: int) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        if len(rows) == 0:
            return out
        cls = self.labels[rows]
        for c in np.unique(cls):
            at = np.nonzero(cls == c)[0]
            out[at] = self.class_block(int(c))[rows[at] - self.offsets[c], part]
        return out

    @classmethod
    def write(cls, folder: str | Path, embeddings_path: str | Path, n_classes: int,
              batch_rows: int = 65536) -> "PartStore":
        """Write the train rows of ``embeddings.parquet`` to ``folder`` (replaced if present),
        class-sorted, and return the store."""
        import pyarrow.parquet as pq

        folder = Path(folder)
        tmp = temporary_name(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        source = pq.ParquetFile(embeddings_path)
        part_cols = sorted((c for c in source.schema_arrow.names if c.startswith("part")),
                           key=lambda c: int(c[4:]))
        labels, ids, shape = [], [], None
        sorted_so_far, last = True, -1
        with open(tmp / cls.DATA, "wb") as out:
            for batch in source.iter_batches(batch_size=batch_rows,
                                             columns=["image_id", "split", "label", *part_cols]):
                train = np.asarray(batch.column("split").to_pylist()) == "train"
                if not train.any():
                    continue
                lab = batch.column("label").to_numpy()[train]
                parts = []
                for name in part_cols:
                    col = batch.column(name)
                    dim = col.type.list_size
                    parts.append(col.values.to_numpy(zero_copy_only=False).reshape(-1, dim)[train])
                emb = np.ascontiguousarray(np.stack(parts, axis=1), dtype=np.float32)
                shape = emb.shape[1:]
                if len(lab) and (lab[0] < last or np.any(np.diff(lab) < 0)):
                    sorted_so_far = False
                last = int(lab[-1]) if len(lab) else last
                out.write(emb.tobytes())
                labels.append(lab.astype(np.int64))
                ids.append(batch.column("image_id").to_numpy()[train].astype(np.int64))
        labels_all = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        ids_all = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        if shape is None:
            shape = (len(part_cols), 1)
        if not sorted_so_far:  # not class-ordered: sort in memory (the stable order of each class)
            order = np.argsort(labels_all, kind="stable")
            data = np.fromfile(tmp / cls.DATA, dtype=np.float32).reshape(-1, *shape)[order]
            data.tofile(tmp / cls.DATA)
            labels_all, ids_all = labels_all[order], ids_all[order]
        offsets = np.searchsorted(labels_all, np.arange(n_classes + 1)).astype(np.int64)
        np.savez(tmp / cls.INDEX, labels=labels_all, image_ids=ids_all, offsets=offsets,
                 shape=np.asarray(shape, dtype=np.int64))
        (tmp / "info.json").write_text(json.dumps({"rows": int(len(labels_all)), "parts": int(shape[0]),
                                                   "dim": int(shape[1]), "classes": n_classes}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
        return cls(folder)


def centroids_of(pool, n_classes: int | None = None) -> np.ndarray:
    """(P, C, D) unit-length mean part embedding of every class (zeros for a class without
    images), one class block at a time."""
    n_classes = pool.n_classes if n_classes is None else n_classes
    out = np.zeros((pool.parts, n_classes, pool.dim))
    for c in range(n_classes):
        block = pool.class_block(c)
        if len(block):
            out[:, c] = block.astype(np.float64).mean(axis=0)
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
