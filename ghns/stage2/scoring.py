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
(``tests/stage2/test_scoring.py`` proves it against dense FilterNet scoring).
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

    def __init__(self, tables: list[np.ndarray], bias: np.ndarray) -> None:
        self.tables = [np.ascontiguousarray(t, dtype=np.float64) for t in tables]  # (N, C) each
        self.bias = np.asarray(bias, dtype=np.float64)

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


class DenseScorer:
    """The same interface as ``PartTables`` for a FilterNet with a hidden layer: logits come
    from running FilterNet on the concatenated part embeddings (no decomposition)."""

    def __init__(self, filternet, embeddings: np.ndarray, temperature: float = 1.0) -> None:
        self.net = filternet.double().eval()
        self.embeddings = torch.from_numpy(np.asarray(embeddings, dtype=np.float64))
        self.temperature = temperature

    def logits(self, sources: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            sets = torch.stack([self.embeddings[torch.from_numpy(sources[:, k]), k]
                                for k in range(sources.shape[1])], 1)
            return self.net(sets).numpy() / self.temperature

    def column_logits(self, sources: np.ndarray, classes: np.ndarray) -> np.ndarray:
        cls = classes if classes.ndim == 2 else classes[:, None]
        out = np.take_along_axis(self.logits(sources), cls, 1)
        return out if classes.ndim == 2 else out[:, 0]


def make_scorer(filternet, embeddings: np.ndarray, temperature: float = 1.0):
    """Per-part tables for a linear FilterNet (the fast path), dense scoring otherwise."""
    return PartTables.from_filternet(filternet, embeddings, temperature) if filternet.is_linear else \
        DenseScorer(filternet, embeddings, temperature)


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
    """Softmax probability of ``classes[i]`` in row i (float64, max-shifted)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    return np.exp(shifted[np.arange(len(classes)), classes] - log_z)


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
        scores[idx] = class_scores(tables.logits(sources[idx]), np.full(len(idx), target))
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
