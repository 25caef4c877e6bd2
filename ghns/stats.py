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


# -- rejection: known against unknown images ----------------------------------------------------

def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve of telling known images from unknown ones by a confidence (higher
    = more likely known): P(conf(known) > conf(unknown)) + 0.5 P(tie), the Mann-Whitney U over
    ``len(known) * len(unknown)``, from average ranks (exact with ties)."""
    from scipy.stats import rankdata

    k, u = np.asarray(known, np.float64).ravel(), np.asarray(unknown, np.float64).ravel()
    if not len(k) or not len(u):
        return float("nan")
    ranks = rankdata(np.concatenate([k, u]))
    u_stat = ranks[: len(k)].sum() - len(k) * (len(k) + 1) / 2.0
    return float(u_stat / (len(k) * len(u)))


def paired_auroc_bootstrap(known_a: np.ndarray, unknown_a: np.ndarray, known_b: np.ndarray,
                           unknown_b: np.ndarray, n_boot: int = 2_000, seed: int = 0,
                           level: float = 0.95) -> dict[str, Any]:
    """Mean over seeds of AUROC(a) - AUROC(b) for two arms' (S, K) known and (S, U) unknown
    confidences, paired on the same images, with a ``level`` percentile interval from a two-way
    bootstrap: draw b takes seed indices (S,), then known image indices (K,), then unknown image
    indices (U,) from ``np.random.default_rng(seed)``, each with replacement, and the statistic is
    the mean over the drawn seeds of the difference of AUROCs on the drawn images."""
    ka, ua, kb, ub = (_as_matrix(np.asarray(x, np.float64)) for x in (known_a, unknown_a, known_b, unknown_b))
    if ka.shape != kb.shape or ua.shape != ub.shape or ka.shape[0] != ua.shape[0]:
        raise ValueError(f"paired arms must have matching shapes, got {ka.shape}, {ua.shape}, {kb.shape}, {ub.shape}")
    s, nk = ka.shape
    nu = ua.shape[1]
    if s == 0 or nk == 0 or nu == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n_boot": 0}
    per_seed = np.array([auroc(ka[i], ua[i]) - auroc(kb[i], ub[i]) for i in range(s)])
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for j in range(n_boot):
        drawn = [int(i) for i in rng.integers(0, s, (s,))]
        ki, ui = rng.integers(0, nk, nk), rng.integers(0, nu, nu)
        means[j] = np.mean([auroc(ka[i, ki], ua[i, ui]) - auroc(kb[i, ki], ub[i, ui]) for i in drawn])
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return {"mean": round(float(per_seed.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "n_boot": n_boot}
