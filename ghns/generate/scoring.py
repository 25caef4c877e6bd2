"""Scoring candidates in feature space (no CNN per candidate), exact and fast.

A candidate is three source indices, one per part. With a linear FilterNet its logits are
``b + T1[s1] + T2[s2] + T3[s3]`` where ``Tk = Wk Ek`` are per-part logit tables computed once.
A candidate of reference class A is kept when FilterNet's softmax score for A is >= tau. With a
calibration temperature T (fitted on val, ``fit_temperature``) the score is the softmax of the
logits divided by T; the tables are divided by T once, so nothing else changes.

Cheap necessary condition: p_A >= tau implies, for every other class c,
``l_A - l_c >= log(tau / (1 - tau))`` (since p_A <= 1 / (1 + exp(l_c - l_A))). Checking it for a
few likely competitors (the classes the swapped parts come from, the reference's strongest rivals)
costs two table columns instead of a full softmax, and only candidates that pass it are scored
fully. The check rejects only when it is violated by more than ``SLACK``, so float rounding can
never make it reject a candidate the full score would keep: the kept set is exactly brute force's
(``tests/generate/test_scoring.py`` proves it against dense FilterNet scoring).
"""

from __future__ import annotations

import math

import numpy as np
import torch

SLACK = 1e-4


def logit_margin(tau: float) -> float:
    """log(tau / (1 - tau)): the logit lead over any single class that p >= tau needs."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    return math.log(tau / (1.0 - tau))


class PartTables:
    """Per-part logit tables of a linear FilterNet over one embedding matrix per part."""

    error = 0.0  # float64 tables: logits exact to rounding

    def __init__(self, tables: list[np.ndarray], bias: np.ndarray) -> None:
        self.tables = [np.ascontiguousarray(t, dtype=np.float64) for t in tables]  # (N, C) each
        self.bias = np.asarray(bias, dtype=np.float64)

    def for_class(self, target: int) -> "PartTables":
        return self

    def prefetch(self, rows: list[np.ndarray]) -> None:
        """Nothing to do: every row is in memory."""

    def scores(self, sources: np.ndarray, target: int, tau: float) -> np.ndarray:
        """Softmax scores for class ``target`` (float64)."""
        return _chunked_scores(self.logits, sources, target)

    @classmethod
    def from_filternet(cls, filternet, embeddings: np.ndarray, temperature: float = 1.0) -> "PartTables":
        """``embeddings`` (N, P, D) -> tables of the logits divided by ``temperature``, computed
        once in float64."""
        with torch.no_grad():
            e = torch.from_numpy(np.asarray(embeddings, dtype=np.float64))
            weight = filternet.net.weight.double().view(-1, filternet.n_parts, filternet.embedding_dim)
            tables = [(e[:, k] @ weight[:, k].T).numpy() / temperature for k in range(filternet.n_parts)]
            return cls(tables, filternet.net.bias.double().numpy() / temperature)

    def logits(self, sources: np.ndarray) -> np.ndarray:
        """(M, 3) source indices -> (M, C) logits."""
        out = self.bias + self.tables[0][sources[:, 0]]
        for k in range(1, len(self.tables)):
            out = out + self.tables[k][sources[:, k]]
        return out

    def column_logits(self, sources: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Logits of one class per candidate, or (M, K) logits for (M, K) ``classes``: only the
        needed table entries are read (K per part, not C)."""
        cls = classes if classes.ndim == 2 else classes[:, None]
        out = self.bias[cls].copy()
        for k, table in enumerate(self.tables):
            out += table[sources[:, k][:, None], cls]
        return out if classes.ndim == 2 else out[:, 0]


class OnDemandTables:
    """The per-part logit tables of a linear FilterNet, one row at a time, for the rows a class
    needs: memory does not grow with images x classes (``PartTables`` holds N x C per part).

    ``for_class`` gives a view whose table rows ``e_k W_k`` (C logits of one source's part k) are
    computed in float32 the first time a candidate needs them and kept for that class only. Each
    float32 logit is within ``error`` of the exact one (the dot-product bound
    ``gamma_D * |w_kc|`` summed over parts; the weights are FilterNet's own float32 and the
    embeddings float32, so the products carry no other rounding). A candidate whose float32
    log-score lies within twice that of ``log(tau)`` is scored again in float64, so the kept set
    is exactly the float64 one; the cheap check reads its few columns in float64.
    """

    def __init__(self, filternet, pool, temperature: float = 1.0) -> None:
        w = filternet.net.weight.detach().float().numpy()
        n_classes = w.shape[0]
        self.parts, self.dim = filternet.n_parts, filternet.embedding_dim
        w = w.reshape(n_classes, self.parts, self.dim)
        self.weight = np.ascontiguousarray(w.transpose(1, 2, 0))  # (P, D, C) float32
        self.class_weight = np.ascontiguousarray(w.transpose(1, 0, 2))  # (P, C, D): a few classes' rows
        self.bias = filternet.net.bias.detach().double().numpy() / temperature
        self.temperature = float(temperature)
        self.pool = pool
        u = 2.0 ** -24
        gamma = self.dim * u / (1 - self.dim * u)
        norms = np.linalg.norm(w.astype(np.float64), axis=2).sum(axis=1)  # sum over parts, per class
        # bound on a logit's float32 error per unit of the largest part-embedding norm
        self.error = float(gamma * 1.01 * norms.max() / temperature) if n_classes else 0.0
        self.rescored = 0  # candidates scored again in float64 (near tau)

    def for_class(self, target: int) -> "_ClassTables":
        return _ClassTables(self)


class _ClassTables:
    """One class's view of ``OnDemandTables``: its cache of table rows. Per part, the source rows
    computed so far sit in a buffer in the order they were computed (grown by doubling, never
    reordered: re-sorting (rows, C) on every miss cost as much as computing them), found through
    the sorted ids and each id's slot."""

    def __init__(self, parent: OnDemandTables) -> None:
        self.parent = parent
        n_classes = parent.weight.shape[2]
        self._ids = [np.zeros(0, np.int64) for _ in range(parent.parts)]    # sorted
        self._slots = [np.zeros(0, np.int64) for _ in range(parent.parts)]  # buffer row of each id
        self._rows = [np.zeros((0, n_classes), np.float32) for _ in range(parent.parts)]
        self._norms = [np.zeros(0) for _ in range(parent.parts)]
        self._used = [0] * parent.parts

    def _positions(self, part: int, rows: np.ndarray) -> np.ndarray:
        """Buffer rows of ``rows`` in the part's cache, computing the missing ones first."""
        ids = self._ids[part]
        at = np.searchsorted(ids, rows)
        found = at < len(ids)
        found[found] = ids[at[found]] == rows[found]
        if not found.all():
            missing = np.unique(rows[~found])
            self._append(part, missing)
            ids = self._ids[part]
            at = np.searchsorted(ids, rows)
        return self._slots[part][at]

    def prefetch(self, rows: list[np.ndarray]) -> None:
        """Compute the table rows of ``rows[k]`` (source rows, -1 ignored) for each part k now, in
        one product per part: BLAS ran 35 rows at two thirds of its speed on 300 (measured at
        D = 512, C = 5,000)."""
        for part, wanted in enumerate(rows):
            wanted = np.unique(wanted[wanted >= 0])
            self._positions(part, wanted)

    def _append(self, part: int, missing: np.ndarray) -> None:
        emb = self.parent.pool.take_part(missing, part)
        used, need = self._used[part], self._used[part] + len(missing)
        if need > len(self._rows[part]):  # grow by doubling, keeping what is there
            grown = np.empty((max(need, 2 * len(self._rows[part])), self._rows[part].shape[1]), np.float32)
            grown[:used] = self._rows[part][:used]
            norms = np.empty(len(grown))
            norms[:used] = self._norms[part][:used]
            self._rows[part], self._norms[part] = grown, norms
        np.matmul(emb, self.parent.weight[part], out=self._rows[part][used:need])
        self._norms[part][used:need] = np.linalg.norm(emb.astype(np.float64), axis=1)
        merged = np.concatenate([self._ids[part], missing])
        slots = np.concatenate([self._slots[part], np.arange(used, need)])
        order = np.argsort(merged, kind="stable")
        self._ids[part], self._slots[part], self._used[part] = merged[order], slots[order], need

    def _table(self, part: int, rows: np.ndarray) -> np.ndarray:
        """(len(rows), C) float32 table rows of part ``part``, computing the missing ones."""
        at = self._positions(part, rows)  # first: it may replace the buffer
        return self._rows[part][at]

    def logits(self, sources: np.ndarray) -> np.ndarray:
        """(M, C) float64 logits from float32 table rows (each within ``error``)."""
        p = self.parent
        out = np.empty((len(sources), p.weight.shape[2]))
        out[:] = p.bias
        for k in range(p.parts):
            rows = self._table(k, sources[:, k])
            out += rows if p.temperature == 1.0 else rows.astype(np.float64) / p.temperature
        return out

    def exact_logits(self, sources: np.ndarray) -> np.ndarray:
        """(M, C) logits in float64 throughout."""
        p = self.parent
        out = np.repeat(p.bias[None], len(sources), axis=0)
        for k in range(p.parts):
            emb = p.pool.take_part(sources[:, k], k).astype(np.float64)
            out += (emb @ p.weight[k].astype(np.float64)) / p.temperature
        return out

    def column_logits(self, sources: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Logits of a few classes per candidate, in float64 (``PartTables.column_logits``)."""
        p = self.parent
        cls = classes if classes.ndim == 2 else classes[:, None]
        uniq, inverse = np.unique(cls, return_inverse=True)
        inverse = inverse.reshape(cls.shape)
        out = p.bias[cls].copy()
        for k in range(p.parts):
            rows, at = np.unique(sources[:, k], return_inverse=True)
            emb = p.pool.take_part(rows, k).astype(np.float64)
            part = emb @ p.class_weight[k][uniq].T.astype(np.float64) / p.temperature  # (U, K)
            out += part[at.reshape(-1)[:, None], inverse]
        return out if classes.ndim == 2 else out[:, 0]

    def scores(self, sources: np.ndarray, target: int, tau: float) -> np.ndarray:
        """Softmax scores for class ``target``: float32 tables, float64 where the side of tau
        is not certain from them."""
        out = _chunked_scores(self.logits, sources, target)
        at = [self._positions(k, sources[:, k]) for k in range(self.parent.parts)]
        norm = np.max([self._norms[k][at[k]] for k in range(self.parent.parts)], axis=0)
        error = self.parent.error * np.maximum(norm, 1.0)  # each logit within this; log p within 2x
        with np.errstate(divide="ignore"):
            near = np.abs(np.log(out) - math.log(tau)) <= 2 * error + 1e-9
        if near.any():
            idx = np.nonzero(near)[0]
            out[idx] = class_scores(self.exact_logits(sources[idx]), np.full(len(idx), target))
            self.parent.rescored += len(idx)
        return out


class DenseScorer:
    """The same interface as ``PartTables`` for a FilterNet with a hidden layer: logits come
    from running FilterNet on the concatenated part embeddings (no decomposition)."""

    error = 0.0

    def __init__(self, filternet, pool, temperature: float = 1.0) -> None:
        self.net = filternet.double().eval()
        self.pool = pool
        self.temperature = temperature

    def for_class(self, target: int) -> "DenseScorer":
        return self

    def prefetch(self, rows: list[np.ndarray]) -> None:
        """Nothing to do: no tables."""

    def logits(self, sources: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            sets = np.stack([self.pool.take_part(sources[:, k], k) for k in range(sources.shape[1])], 1)
            return self.net(torch.from_numpy(sets.astype(np.float64))).numpy() / self.temperature

    def scores(self, sources: np.ndarray, target: int, tau: float) -> np.ndarray:
        return _chunked_scores(self.logits, sources, target)

    def column_logits(self, sources: np.ndarray, classes: np.ndarray) -> np.ndarray:
        cls = classes if classes.ndim == 2 else classes[:, None]
        out = np.take_along_axis(self.logits(sources), cls, 1)
        return out if classes.ndim == 2 else out[:, 0]


def make_scorer(filternet, pool, temperature: float = 1.0):
    """Per-part tables computed on demand for a linear FilterNet (the fast path), dense scoring
    otherwise; ``pool`` is where part embeddings are read (``ghns.generate.pool``)."""
    return OnDemandTables(filternet, pool, temperature) if filternet.is_linear else \
        DenseScorer(filternet, pool, temperature)


def _chunked_scores(logits_fn, sources: np.ndarray, target: int, chunk: int = 1024) -> np.ndarray:
    """``class_scores`` of ``logits_fn(sources)`` a chunk at a time (bounded (chunk, C) memory)."""
    out = np.empty(len(sources))
    for i in range(0, len(sources), chunk):
        part = sources[i:i + chunk]
        out[i:i + chunk] = class_scores(logits_fn(part), np.full(len(part), target))
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.05,
                    high: float = 50.0, steps: int = 400) -> float:
    """The temperature T that minimises the mean negative log-likelihood of ``softmax(logits / T)``
    on held-out (val) sets (Guo et al. 2017): a golden-section search on log T over [low, high]
    (the NLL is convex in 1/T), refined from a log-spaced grid of ``steps``. 1.0 without data."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]))

    grid = np.linspace(math.log(low), math.log(high), steps)
    values = [nll(g) for g in grid]
    i = int(np.argmin(values))
    a, b = grid[max(0, i - 1)], grid[min(steps - 1, i + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # golden section inside the bracketing grid cells
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if nll(c) < nll(d):
            b = d
        else:
            a = c
    return round(math.exp((a + b) / 2), 6)


def class_scores(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Softmax probability of ``classes[i]`` in row i (float64, max-shifted). ``logits`` is
    left as it was; the work happens in one scratch array."""
    rows = np.arange(len(classes))
    scratch = logits - logits.max(axis=1, keepdims=True)
    own = scratch[rows, classes].copy()
    np.exp(scratch, out=scratch)
    return np.exp(own - np.log(scratch.sum(axis=1)))


def score_candidates(tables: PartTables, sources: np.ndarray, target: int, tau: float,
                     competitors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of candidates for class ``target``: (keep mask, scores, fully scored count).

    ``competitors`` (M, K) are classes checked cheaply first; candidates failing the necessary
    condition get score -1 (not computed) and are not kept.
    """
    m = len(sources)
    scores = np.full(m, -1.0)
    if m == 0:
        return np.zeros(0, bool), scores, 0
    alive = np.ones(m, bool)
    if competitors is not None and competitors.size:
        cls = np.concatenate([np.full((m, 1), target), competitors], axis=1)
        col = tables.column_logits(sources, cls)
        lead = col[:, :1] - col[:, 1:]  # l_A - l_c
        lead[cls[:, 1:] == target] = np.inf
        alive = (lead >= logit_margin(tau) - SLACK).all(axis=1)
    idx = np.nonzero(alive)[0]
    if len(idx):
        scores[idx] = tables.scores(sources[idx], target, tau)
    return scores >= tau, scores, len(idx)


def dense_scores(filternet, embeddings: np.ndarray, sources: np.ndarray, target: int,
                 temperature: float = 1.0) -> np.ndarray:
    """The brute-force way: materialise each candidate's concatenated embeddings and run
    FilterNet on them (float64, for exact comparison in tests)."""
    with torch.no_grad():
        e = torch.from_numpy(np.asarray(embeddings, dtype=np.float64))
        sets = torch.stack([e[torch.from_numpy(sources[:, k]), k] for k in range(sources.shape[1])], 1)
        net = filternet.double()
        logits = net(sets).numpy() / temperature
        filternet.float()
    return class_scores(logits, np.full(len(sources), target))
