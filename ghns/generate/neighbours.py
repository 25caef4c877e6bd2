"""Nearest-part lookup: exact over a small pool, or through a FAISS index over the train split.

Replacements for a reference's part k are taken nearest-first to the reference's own part k
(inner product of unit vectors, i.e. cosine similarity), other classes only, so the most similar
(hardest) candidates are scored first. Parts more similar than a limit are skipped (one limit, or
one per query: the replacement band of ``ghns.generate.replacements``): a replacement identical to
the part it replaces makes a false negative, not a hard one.

Two ways, one order (similarity in float32 as numpy computes it, ties to the lower row):

* ``nearest``: exact, over the rows it is given. With donor classes (the default) a class's
  replacements come from a few donor classes' images, so this is all the generator needs, and its
  memory does not grow with the train split.
* ``PartNeighbours``: one FAISS index per part over every train image, for the paper's rule
  (every other class). The index only *retrieves*: candidates are re-ranked by their exact
  similarity from the embeddings, so an approximate index can miss a neighbour but never
  reorders or mis-filters one. Kind by size (``index_kind``): exact ``IndexFlatIP`` up to
  ``FLAT_MAX`` images, IVF-Flat up to ``PQ_ABOVE``, IVF-PQ (64 bytes a vector at D = 512) beyond;
  on the GPU when FAISS sees one. Built once by the driver (``build``; an approximate index's
  ``nprobe`` is doubled until its recall on sampled queries reaches 0.95, ``tune``), written next
  to the embedding store and read by every actor (``read``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from ghns.errors import GHNSError
from ghns.rundir import atomic_write_text

log = logging.getLogger(__name__)

FLAT_MAX = 200_000      # images: exact search up to here (200k x 512 x 4 B = 410 MB per part)
PQ_ABOVE = 2_000_000    # images: IVF-PQ beyond, IVF-Flat between
NPROBE = 16
REFINE = 4  # an approximate index retrieves this many times the candidates it must return
KINDS = ("auto", "flat", "ivf", "ivfpq")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise GHNSError("stage 2 needs FAISS: pip install 'ghns[cpu]' (or 'ghns[gpu]')") from None
    return faiss


def index_kind(n: int, kind: str = "auto") -> str:
    """The index for ``n`` train images: ``kind`` itself unless it is 'auto'."""
    if kind not in KINDS:
        raise GHNSError(f"unknown neighbour index {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if n <= FLAT_MAX else ("ivf" if n <= PQ_ABOVE else "ivfpq")


def nearest(queries: np.ndarray, pool: np.ndarray, pool_rows: np.ndarray, k: int,
            limits: np.ndarray) -> np.ndarray:
    """Exact: for each query vector (R, D), the ``k`` rows of ``pool`` (M, D; their ids
    ``pool_rows``) most similar to it with similarity at most its limit, nearest first, ties to
    the lower id; -1 where fewer exist."""
    out = np.full((len(queries), k), -1, dtype=np.int64)
    if len(queries) == 0 or len(pool_rows) == 0 or k == 0:
        return out
    sims = np.asarray(queries, np.float32) @ np.asarray(pool, np.float32).T
    for row in range(len(queries)):
        ok = sims[row] <= limits[row]
        cand, sim = pool_rows[ok], sims[row][ok]
        take = cand[np.lexsort((cand, -sim))][:k]
        out[row, :len(take)] = take
    return out


class PartNeighbours:
    """Per part, a FAISS index over every row of ``pool`` (``ghns.generate.pool``)."""

    def __init__(self, pool, indexes: list, kind: str, use_gpu: bool = True,
                 nprobe: int = NPROBE) -> None:
        faiss = _faiss()
        self.pool, self.kind = pool, kind
        self.labels = pool.labels
        self.max_class = int(np.bincount(self.labels).max()) if len(self.labels) else 0
        self.gpu = use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        if self.gpu:
            indexes = [faiss.index_cpu_to_all_gpus(ix) for ix in indexes]
        self.indexes = indexes
        self.set_nprobe(nprobe)

    @property
    def nlist(self) -> int:
        return int(getattr(self.indexes[0], "nlist", 0)) if self.indexes else 0

    def set_nprobe(self, nprobe: int) -> None:
        """Inverted lists an approximate index visits per query (ignored by a flat index)."""
        self.nprobe = nprobe
        for ix in self.indexes:
            if hasattr(ix, "nprobe"):
                ix.nprobe = nprobe

    def tune(self, queries: np.ndarray, k: int, target: float = 0.95) -> float:
        """Double ``nprobe`` from ``NPROBE`` until the recall of part 1's ``k`` nearest other-class
        parts for ``queries`` reaches ``target`` (or every list is visited); returns that recall.
        An exact index returns 1.0 untouched."""
        if self.kind == "flat":
            return 1.0
        nprobe = NPROBE
        while True:
            self.set_nprobe(min(nprobe, self.nlist))
            recall = search_recall(self, queries, 0, k)
            if recall >= target or nprobe >= self.nlist:
                return recall
            nprobe *= 2

    @classmethod
    def build(cls, pool, kind: str = "auto", use_gpu: bool = True, nlist: int | None = None,
              seed: int = 0, chunk: int = 65536) -> "PartNeighbours":
        """Index every row of ``pool``, ``chunk`` rows at a time (IVF kinds train their coarse
        quantizer, and PQ its codebooks, on a seeded sample of 64 rows per list)."""
        faiss = _faiss()
        n, dim = len(pool), pool.dim
        kind = index_kind(n, kind)
        nlist = nlist or max(1, min(n // 39, int(4 * math.sqrt(max(n, 1)))))
        train = None
        if kind != "flat" and n:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
            train = pool.take(sample)
        indexes = []
        for part in range(pool.parts):
            if kind == "flat":
                index = faiss.IndexFlatIP(dim)
            elif kind == "ivf":
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                m = _pq_subquantizers(dim)
                n_train = 0 if train is None else len(train)
                nbits = int(min(8, max(4, math.log2(max(n_train, 1) / 39))))  # 39 points a code
                index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, nbits,
                                         faiss.METRIC_INNER_PRODUCT)
            if train is not None:
                index.train(np.ascontiguousarray(train[:, part]))
            for start in range(0, n, chunk):  # row order: ids are rows
                rows = np.arange(start, min(n, start + chunk))
                index.add(np.ascontiguousarray(pool.take_part(rows, part)))
            indexes.append(index)
        return cls(pool, indexes, kind, use_gpu)

    def write(self, folder: Path) -> int:
        """Write the indexes (CPU copies) to ``folder``; returns their bytes."""
        faiss = _faiss()
        folder.mkdir(parents=True, exist_ok=True)
        size = 0
        for part, index in enumerate(self.indexes):
            path = folder / f"index_part{part + 1}.faiss"
            faiss.write_index(faiss.index_gpu_to_cpu(index) if self.gpu else index, str(path))
            size += path.stat().st_size
        atomic_write_text(folder / "index.json", json.dumps({"kind": self.kind, "nprobe": self.nprobe}))
        return size

    @classmethod
    def read(cls, folder: Path, pool, use_gpu: bool = True) -> "PartNeighbours":
        faiss = _faiss()
        indexes = [faiss.read_index(str(folder / f"index_part{p + 1}.faiss")) for p in range(pool.parts)]
        meta = json.loads((folder / "index.json").read_text())
        return cls(pool, indexes, meta["kind"], use_gpu, meta["nprobe"])

    def search(self, queries: np.ndarray, part: int, k: int,
               max_similarity: float | np.ndarray = 1.0) -> np.ndarray:
        """For each query row, its ``k`` nearest part-``part`` rows of other classes whose
        similarity to the query's part is at most ``max_similarity`` (one limit, or one per
        query): ids nearest first, ties to the lower id, -1 where fewer exist. Retrieval widens
        until every query has ``k`` or the index is exhausted."""
        queries = np.asarray(queries, dtype=np.int64)
        out = np.full((len(queries), k), -1, dtype=np.int64)
        n = len(self.labels)
        if len(queries) == 0 or k == 0 or n == 0:
            return out
        limits = np.broadcast_to(np.asarray(max_similarity, dtype=np.float64), (len(queries),))
        x = np.ascontiguousarray(self.pool.take_part(queries, part))
        want = min(n, (k + self.max_class) * (1 if self.kind == "flat" else REFINE))
        pending = np.arange(len(queries))
        while len(pending):
            _, idx = self.indexes[part].search(x[pending], want)
            short = []
            for row, i_row in zip(pending, idx):
                cand = np.unique(i_row[i_row >= 0])
                cand = cand[self.labels[cand] != self.labels[queries[row]]]
                take = nearest(x[row:row + 1], self.pool.take_part(cand, part), cand, k, limits[row:row + 1])[0]
                out[row] = take
                if (take < 0).any() and want < n:
                    short.append(row)
            pending = np.asarray(short, dtype=np.int64)
            want = min(n, want * 4)
        return out


def _pq_subquantizers(dim: int) -> int:
    """Sub-quantizers of IVF-PQ: 8 dimensions each (64 bytes a vector at D = 512), dividing D."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


def search_recall(index: PartNeighbours, queries: np.ndarray, part: int, k: int) -> float:
    """Share of the exact ``k`` nearest other-class rows (over the whole pool, class block by
    class block) that ``index.search`` returns for ``queries`` (1.0 for an exact index)."""
    pool = index.pool
    x = pool.take_part(queries, part)
    best_sim = np.full((len(queries), 0), -np.inf, np.float32)
    best_row = np.zeros((len(queries), 0), np.int64)
    for c in range(pool.n_classes):
        rows = pool.class_rows(c)
        if not len(rows):
            continue
        sims = x @ pool.class_block(c)[:, part].T
        sims[pool.labels[queries] == c] = -np.inf
        best_sim = np.concatenate([best_sim, sims], axis=1)
        best_row = np.concatenate([best_row, np.broadcast_to(rows, sims.shape)], axis=1)
        keep = np.argsort(-best_sim, axis=1, kind="stable")[:, :k]
        best_sim = np.take_along_axis(best_sim, keep, 1)
        best_row = np.take_along_axis(best_row, keep, 1)
    got = index.search(queries, part, k)
    hits = sum(len(np.intersect1d(g[g >= 0], t[np.isfinite(s)]))
               for g, t, s in zip(got, best_row, best_sim))
    total = int(np.isfinite(best_sim).sum())
    return hits / total if total else 1.0


def exact_neighbours(embeddings: np.ndarray, labels: np.ndarray, queries: np.ndarray, part: int,
                     k: int, max_similarity: float | np.ndarray = 1.0,
                     allowed: np.ndarray | None = None) -> np.ndarray:
    """The same lookup by brute force in float64 numpy (tests, tiny problems)."""
    x = embeddings[:, part].astype(np.float64)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    limits = np.broadcast_to(np.asarray(max_similarity, dtype=np.float64), (len(queries),))
    mask = np.ones(len(labels), bool) if allowed is None else np.isin(np.arange(len(labels)), allowed)
    for row, q in enumerate(queries):
        sims = x @ x[q]
        cand = np.nonzero((labels != labels[q]) & (sims <= limits[row]) & mask)[0]
        order = np.lexsort((cand, -sims[cand]))
        take = cand[order][:k]
        out[row, :len(take)] = take
    return out
