"""Fusion of classifier scores (paper Eq. 11) and accuracy figures: pure numpy.

``final = a * original + b * object + c * parts`` on softmax scores, (a, b, c) searched on a grid
of ``step`` with a + b + c = 1, chosen on the validation split only; test is evaluated at the
chosen weights. Ties in validation accuracy go to the lower validation loss (mean negative log of
the fused score of the true class), then to the first weights in grid order.
"""

from __future__ import annotations

import itertools

import numpy as np


def weight_grid(n: int, step: float = 0.05) -> list[tuple[float, ...]]:
    """Every n-tuple of multiples of ``step`` summing to 1 (231 triples for step 0.05)."""
    units = int(round(1 / step))
    out = []
    for combo in itertools.product(range(units + 1), repeat=n):
        if sum(combo) == units:
            out.append(tuple(round(c * step, 10) for c in combo))
    return out


def fuse(scores: list[np.ndarray], weights: tuple[float, ...]) -> np.ndarray:
    return sum(w * s for w, s in zip(weights, scores))


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Percent of rows whose label is among the k highest scores (ties: lower class index first)."""
    if len(labels) == 0:
        return float("nan")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return 100.0 * float((order == labels[:, None]).any(axis=1).mean())


def search_weights(val_scores: list[np.ndarray], val_labels: np.ndarray,
                   step: float = 0.05) -> tuple[tuple[float, ...], float]:
    """The grid weights with the best validation top-1 (ties: lower NLL, then grid order)."""
    best, best_key = None, None
    rows = np.arange(len(val_labels))
    for w in weight_grid(len(val_scores), step):
        fused = fuse(val_scores, w)
        acc = topk_accuracy(fused, val_labels)
        nll = -float(np.mean(np.log(np.clip(fused[rows, val_labels], 1e-12, None))))
        key = (acc, -nll)
        if best_key is None or key > best_key:
            best, best_key = w, key
    return best, best_key[0]


def confused_pairs(scores: np.ndarray, labels: np.ndarray, names: list[str], top: int = 10) -> list[dict]:
    """The most frequent (true, predicted) confusions, both directions of a pair counted together."""
    pred = scores.argmax(axis=1)
    counts: dict[tuple[int, int], int] = {}
    for t, p in zip(labels, pred):
        if t != p:
            key = (min(t, p), max(t, p))
            counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"classes": [names[a], names[b]], "errors": n} for (a, b), n in ranked]
