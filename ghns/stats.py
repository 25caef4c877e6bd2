"""Paired comparisons of two classifiers over seeds and test images: pure numpy, no Ray.

The study (``ghns study``) trains one arm "with" and one arm "without" hard negatives for each
of S seeds and scores the same N test images, so its evidence is two (S, N) boolean matrices of
correct predictions. Two questions are asked of them:

* How large is the difference, and how sure? ``paired_bootstrap``: the mean of ``with - without``
  over seeds and images (percentage points) with a percentile interval from a two-way bootstrap
  that resamples seeds and images independently, so both the training noise (seeds) and the
  finite test set (images) widen it.
* Is there a difference at all? ``mcnemar``: the exact two-sided McNemar test on the pooled
  discordant pairs (image-seed pairs one arm gets right and the other wrong).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x[None, :] if x.ndim == 1 else x


def paired_bootstrap(with_correct: np.ndarray, without_correct: np.ndarray, n_boot: int = 10_000,
                     seed: int = 0, level: float = 0.95, chunk: int = 1000) -> dict[str, Any]:
    """Mean paired difference (percentage points) of two (S, N) correctness matrices and its
    ``level`` percentile interval over ``n_boot`` two-way bootstrap resamples (seeds and images
    drawn with replacement, independently). Draw b takes seed indices ``s_b`` (S,) and image
    indices ``i_b`` (N,) from ``np.random.default_rng(seed)``, seeds first, in that order."""
    a, b = _as_matrix(with_correct), _as_matrix(without_correct)
    if a.shape != b.shape:
        raise ValueError(f"paired arms must have the same shape, got {a.shape} and {b.shape}")
    s, n = a.shape
    if s == 0 or n == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n_boot": 0}
    diff = a.astype(np.float64) - b.astype(np.float64)  # (S, N) in {-1, 0, 1}
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        seeds = np.empty((m, s), np.int64)
        counts = np.empty((m, n))
        for j in range(m):  # the documented draw order, so a plain loop reproduces it
            seeds[j] = rng.integers(0, s, s)
            counts[j] = np.bincount(rng.integers(0, n, n), minlength=n)
        per_seed = diff @ counts.T  # (S, m): each seed's image-weighted sum under each draw
        picked = np.take_along_axis(per_seed, seeds.T, axis=0)  # (S, m)
        means[start:start + m] = picked.sum(axis=0) / (s * n)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return {"mean": round(100.0 * float(diff.mean()), 4),
            "ci95": [round(100.0 * float(lo), 4), round(100.0 * float(hi), 4)], "n_boot": n_boot}


def mcnemar(with_correct: np.ndarray, without_correct: np.ndarray) -> dict[str, Any]:
    """Exact two-sided McNemar test on pooled pairs: ``b`` = pairs only "with" gets right,
    ``c`` = pairs only "without" gets right; p = min(1, 2 * P(X <= min(b, c))), X ~ Bin(b + c, 1/2)."""
    a, w = np.asarray(with_correct, bool).ravel(), np.asarray(without_correct, bool).ravel()
    if a.shape != w.shape:
        raise ValueError(f"paired arms must have the same shape, got {a.shape} and {w.shape}")
    b, c = int((a & ~w).sum()), int((~a & w).sum())
    return {"only_with": b, "only_without": c, "p": binomial_two_sided(min(b, c), b + c)}


def binomial_two_sided(k: int, n: int) -> float:
    """min(1, 2 * P(X <= k)) for X ~ Bin(n, 1/2), in log space (exact for any n)."""
    if n == 0:
        return 1.0
    log_half = n * math.log(0.5)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half
             for i in range(k + 1)]
    top = max(terms)
    cdf = math.exp(top) * sum(math.exp(t - top) for t in terms)
    return min(1.0, 2.0 * cdf)


def sign_test_greater(only_new: int, only_old: int) -> float:
    """One-sided exact sign test (McNemar) that a new model beats an old one on paired items:
    P(X >= only_new) for X ~ Bin(only_new + only_old, 1/2), where ``only_new`` / ``only_old``
    count the items only the new / only the old model gets right (ties carry no evidence)."""
    n = only_new + only_old
    if n == 0:
        return 1.0
    log_half = n * math.log(0.5)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half
             for i in range(only_new, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def mean_std(values: list[float] | np.ndarray) -> dict[str, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value), rounded to 0.01."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return {"mean": float("nan"), "std": float("nan")}
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return {"mean": round(float(x.mean()), 2), "std": round(std, 2)}
