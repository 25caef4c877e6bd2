"""FAISS nearest-part lookup: per part, an index over every part embedding of the train split.

Replacements for a reference's part k are taken nearest-first to the reference's own part k
(inner product of unit vectors, i.e. cosine similarity), other classes only, so the most similar
(hardest) candidates are scored first. Parts more similar than ``max_similarity`` are skipped:
a replacement identical to the part it replaces makes a set that looks exactly like the reference
class, a false negative rather than a hard one (on the synthetic set, every nearest other-class
head is the same head variant, cosine 0.999). Exact (``IndexFlatIP``) by default; IVF when the pool is
large; on the GPU when FAISS sees one.
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
        self.kind = ("ivf" if n > ivf_above else "flat") + ("-gpu" if gpu else "")

    def search(self, queries: np.ndarray, part: int, k: int, max_similarity: float = 1.0) -> np.ndarray:
        """For each query image index, its ``k`` nearest part-``part`` sources of other classes
        whose cosine similarity to the query's part is at most ``max_similarity`` (indices,
        nearest first, ties by index; -1 where fewer exist). The search widens until every query
        has ``k`` or the pool is exhausted."""
        queries = np.asarray(queries, dtype=np.int64)
        out = np.full((len(queries), k), -1, dtype=np.int64)
        if len(queries) == 0 or k == 0:
            return out
        n = len(self.labels)
        want = min(n, k + self.max_class)
        x = np.ascontiguousarray(self.embeddings[queries, part], dtype=np.float32)
        pending = np.arange(len(queries))
        while len(pending):
            sims, idx = self.indexes[part].search(x[pending], want)
            short = []
            for row, (s_row, i_row) in zip(pending, zip(sims, idx)):
                q = queries[row]
                ok = (i_row >= 0) & (self.labels[np.maximum(i_row, 0)] != self.labels[q])
                ok &= s_row <= max_similarity
                cand, sim = i_row[ok], s_row[ok]
                order = np.lexsort((cand, -sim))  # similarity, then index: deterministic ties
                take = cand[order][:k]
                out[row, :len(take)] = take
                if len(take) < k and want < n:
                    short.append(row)
            pending = np.asarray(short, dtype=np.int64)
            want = min(n, want * 4)
        return out


def exact_neighbours(embeddings: np.ndarray, labels: np.ndarray, queries: np.ndarray, part: int,
                     k: int, max_similarity: float = 1.0) -> np.ndarray:
    """The same lookup by brute force in numpy (tests, tiny problems)."""
    x = embeddings[:, part].astype(np.float64)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for row, q in enumerate(queries):
        sims = x @ x[q]
        cand = np.nonzero((labels != labels[q]) & (sims <= max_similarity))[0]
        order = np.lexsort((cand, -sims[cand]))
        take = cand[order][:k]
        out[row, :len(take)] = take
    return out
