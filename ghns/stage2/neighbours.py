"""FAISS nearest-part lookup: per part, an index over every part embedding of the train split.

Replacements for a reference's part k are taken nearest-first to the reference's own part k
(inner product of unit vectors, i.e. cosine similarity), other classes only, so the most similar
(hardest) candidates are scored first. Parts more similar than ``max_similarity`` are skipped:
a replacement identical to the part it replaces makes a set that looks exactly like the reference
class, a false negative rather than a hard one (on the synthetic set, every nearest other-class
head is the same head variant, cosine 0.999); the limit may differ per query (the replacement
band, ``ghns.stage2.replacements``). With ``allowed`` the search runs over those sources only
(the donor classes' images), through a FAISS ID selector. Exact (``IndexFlatIP``) by default; IVF
when the pool is large; on the GPU when FAISS sees one.
"""

from __future__ import annotations

import logging

import numpy as np

from ghns.errors import GHNSError

log = logging.getLogger(__name__)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise GHNSError("stage 2 needs FAISS: pip install 'ghns[cpu]' (or 'ghns[gpu]')") from None
    return faiss


class PartNeighbours:
    def __init__(self, embeddings: np.ndarray, labels: np.ndarray, ivf_above: int = 200_000,
                 use_gpu: bool = True) -> None:
        faiss = _faiss()
        self.labels = np.asarray(labels)
        n, parts, dim = embeddings.shape
        self.max_class = int(np.bincount(self.labels).max()) if n else 0
        self.indexes = []
        gpu = use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        for k in range(parts):
            x = np.ascontiguousarray(embeddings[:, k], dtype=np.float32)
            if n > ivf_above:
                nlist = int(4 * np.sqrt(n))
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
                index.train(x)
                index.nprobe = 16
            else:
                index = faiss.IndexFlatIP(dim)
            if gpu:
                index = faiss.index_cpu_to_all_gpus(index)
            index.add(x)
            self.indexes.append(index)
        self.embeddings = embeddings
        self.gpu, self.ivf, self.nprobe = gpu, n > ivf_above, 16
        self.kind = ("ivf" if n > ivf_above else "flat") + ("-gpu" if gpu else "")

    def search(self, queries: np.ndarray, part: int, k: int,
               max_similarity: float | np.ndarray = 1.0,
               allowed: np.ndarray | None = None) -> np.ndarray:
        """For each query image index, its ``k`` nearest part-``part`` sources of other classes
        whose cosine similarity to the query's part is at most ``max_similarity`` (one limit, or
        one per query) and, with ``allowed`` (source image indices, e.g. the donor classes'
        images), among those only (indices, nearest first, ties by index; -1 where fewer exist).
        The search widens until every query has ``k`` or the pool is exhausted."""
        queries = np.asarray(queries, dtype=np.int64)
        out = np.full((len(queries), k), -1, dtype=np.int64)
        if len(queries) == 0 or k == 0 or (allowed is not None and len(allowed) == 0):
            return out
        limits = np.broadcast_to(np.asarray(max_similarity, dtype=np.float64), (len(queries),))
        x = np.ascontiguousarray(self.embeddings[queries, part], dtype=np.float32)
        if allowed is not None and self.gpu:  # GPU indexes take no ID selector: search the subset
            return _subset_search(self.embeddings, self.labels, queries, part, k, limits, allowed)
        pool = len(self.labels) if allowed is None else len(allowed)
        want = min(pool, k + (self.max_class if allowed is None else 0))
        params = None
        if allowed is not None:
            faiss = _faiss()
            selector = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
            params = (faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe) if self.ivf
                      else faiss.SearchParameters(sel=selector))
        pending = np.arange(len(queries))
        while len(pending):
            if params is None:
                sims, idx = self.indexes[part].search(x[pending], want)
            else:
                sims, idx = self.indexes[part].search(x[pending], want, params=params)
            short = []
            for row, (s_row, i_row) in zip(pending, zip(sims, idx)):
                q = queries[row]
                ok = (i_row >= 0) & (self.labels[np.maximum(i_row, 0)] != self.labels[q])
                ok &= s_row <= limits[row]
                cand, sim = i_row[ok], s_row[ok]
                order = np.lexsort((cand, -sim))  # similarity, then index: deterministic ties
                take = cand[order][:k]
                out[row, :len(take)] = take
                if len(take) < k and want < pool:
                    short.append(row)
            pending = np.asarray(short, dtype=np.int64)
            want = min(pool, want * 4)
        return out


def _subset_search(embeddings: np.ndarray, labels: np.ndarray, queries: np.ndarray, part: int,
                   k: int, limits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Exact search restricted to ``allowed`` rows (float32 inner products, as FAISS)."""
    allowed = np.sort(np.asarray(allowed, dtype=np.int64))
    pool = np.ascontiguousarray(embeddings[allowed, part], dtype=np.float32)
    sims = np.ascontiguousarray(embeddings[queries, part], dtype=np.float32) @ pool.T
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for row, q in enumerate(queries):
        ok = (labels[allowed] != labels[q]) & (sims[row] <= limits[row])
        cand, sim = allowed[ok], sims[row][ok]
        take = cand[np.lexsort((cand, -sim))][:k]
        out[row, :len(take)] = take
    return out


def exact_neighbours(embeddings: np.ndarray, labels: np.ndarray, queries: np.ndarray, part: int,
                     k: int, max_similarity: float | np.ndarray = 1.0,
                     allowed: np.ndarray | None = None) -> np.ndarray:
    """The same lookup by brute force in numpy (tests, tiny problems)."""
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
