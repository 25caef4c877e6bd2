"""Fusion of classifier scores and accuracy figures: pure numpy. Two rules, both chosen on the
validation split only (test is evaluated at the choice):

- ``grid`` (paper Eq. 11): ``final = a * original + b * object + c * parts`` on softmax scores,
  (a, b, c) searched on a grid of ``step`` with a + b + c = 1 for the best val top-1. Ties in val
  accuracy go to the lower val loss (mean negative log of the fused score of the true class), then
  to the first weights in grid order.
- ``loglinear`` (the default): ``final = softmax(sum_i log(p_i) / T_i)``, a product of experts with
  one temperature per classifier, each fitted alone on the val log-loss (a convex problem in
  1 / T). It fits one smooth number per classifier instead of choosing a point of a 2-d grid by
  the accuracy of 150 images, so it overfits val less (``benchmarks/fusion_rules.py`` compares the
  two by cross-validation inside val).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

RULES = ("loglinear", "grid")
INVERSE_TEMPERATURE = (0.1, 10.0)  # bounds of 1 / T: temperatures from 0.1 to 10


def weight_grid(n: int, step: float = 0.05) -> list[tuple[float, ...]]:
    """Every n-tuple of multiples of ``step`` summing to 1 (231 triples for step 0.05)."""
    units = int(round(1 / step))
    out = []
    for combo in itertools.product(range(units + 1), repeat=n):
        if sum(combo) == units:
            out.append(tuple(round(c * step, 10) for c in combo))
    return out


def fuse(scores: list[np.ndarray], weights: tuple[float, ...]) -> np.ndarray:
    out = weights[0] * scores[0]
    for w, s in zip(weights[1:], scores[1:]):
        out = out + w * s
    return out


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Percent of rows whose label is among the k highest scores (ties: lower class index first)."""
    if len(labels) == 0:
        return float("nan")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return 100.0 * float((order == labels[:, None]).any(axis=1).mean())


def search_weights(val_scores: list[np.ndarray], val_labels: np.ndarray,
                   step: float = 0.05) -> tuple[tuple[float, ...], float]:
    """The grid weights with the best validation top-1 (ties: lower NLL, then grid order)."""
    best: tuple[float, ...] = ()
    best_key: tuple[float, float] | None = None
    rows = np.arange(len(val_labels))
    for w in weight_grid(len(val_scores), step):
        fused = fuse(val_scores, w)
        acc = topk_accuracy(fused, val_labels)
        nll = -float(np.mean(np.log(np.clip(fused[rows, val_labels], 1e-12, None))))
        key = (acc, -nll)
        if best_key is None or key > best_key:
            best, best_key = w, key
    assert best_key is not None, "an empty weight grid"
    return best, best_key[0]


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-12, None))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def tempered_nll(scores: np.ndarray, labels: np.ndarray, inverse_t: float) -> float:
    """Mean negative log-likelihood of ``softmax(log(scores) * inverse_t)`` at the labels."""
    z = _log_softmax(_log(scores) * inverse_t)
    return float(-z[np.arange(len(labels)), labels].mean())


def fit_inverse_temperature(scores: np.ndarray, labels: np.ndarray, iters: int = 80) -> float:
    """The 1 / T in ``INVERSE_TEMPERATURE`` of the lowest val log-loss: golden-section search on
    log(1 / T), exact up to ~1e-9 relative because the loss is convex in 1 / T (and so unimodal in
    its log)."""
    lo, hi = (math.log(b) for b in INVERSE_TEMPERATURE)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = (tempered_nll(scores, labels, math.exp(x)) for x in (a, b))
    for _ in range(iters):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = tempered_nll(scores, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = tempered_nll(scores, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


def fuse_loglinear(scores: list[np.ndarray], inverse_t: tuple[float, ...]) -> np.ndarray:
    """``softmax(sum_i log(p_i) / T_i)``: rows are probabilities again."""
    z = np.zeros_like(scores[0], dtype=np.float64)
    for s, b in zip(scores, inverse_t):
        z = z + _log(s) * b
    return np.exp(_log_softmax(z))


@dataclass(frozen=True)
class Fusion:
    """A chosen fusion: ``rule`` and its numbers (grid: the weights; loglinear: the temperatures)."""

    rule: str
    values: tuple[float, ...]

    def __call__(self, scores: list[np.ndarray]) -> np.ndarray:
        if self.rule == "grid":
            return fuse(scores, self.values)
        return fuse_loglinear(scores, tuple(1.0 / t for t in self.values))

    @property
    def weights(self) -> tuple[float, ...]:
        """Weights summing to 1 that rank classes as this fusion does: of the softmax scores for
        ``grid``, of the log-scores (``1 / T_i`` normalised) for ``loglinear``."""
        if self.rule == "grid":
            return self.values
        inv = [1.0 / t for t in self.values]
        return tuple(round(b / sum(inv), 4) for b in inv)

    def describe(self) -> dict:
        key = "weights" if self.rule == "grid" else "temperatures"
        return {"rule": self.rule, key: [round(v, 4) for v in self.values]}

    @classmethod
    def from_dict(cls, d: dict) -> "Fusion":
        rule = d.get("rule", "grid")
        return cls(rule, tuple(d["weights"] if rule == "grid" else d["temperatures"]))


def choose_fusion(val_scores: list[np.ndarray], val_labels: np.ndarray, rule: str = "loglinear",
                  step: float = 0.05) -> Fusion:
    """The fusion of ``rule`` chosen on val (see the module docstring)."""
    if rule == "grid":
        return Fusion("grid", search_weights(val_scores, val_labels, step)[0])
    if rule == "loglinear":
        return Fusion("loglinear", tuple(1.0 / fit_inverse_temperature(s, val_labels) for s in val_scores))
    raise ValueError(f"unknown fusion rule {rule!r}; expected one of {RULES}")


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
