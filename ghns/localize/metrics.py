"""Localization quality against ground truth: ``object_iou50`` and ``part_center_hit``."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ghns.localize.boxes import Box, contains, iou


def object_iou50(pred: list[Box], truth: list[Box]) -> float:
    """Fraction of images whose predicted object box has IoU >= 0.5 with the true box."""
    pairs = [(p, t) for p, t in zip(pred, truth) if not any(math.isnan(v) for v in t)]
    return float(np.mean([iou(p, t) >= 0.5 for p, t in pairs])) if pairs else math.nan


def hit_matrix(centres: np.ndarray, truth: list[list[Box]]) -> np.ndarray:
    """``H[k, j]``: fraction of images where learned part k's centre lies in true part j's box
    (images where true part j is missing are left out of column j)."""
    n_learned, n_true = centres.shape[1], len(truth[0]) if truth else 0
    hits = np.zeros((n_learned, n_true))
    for j in range(n_true):
        rows = [i for i, boxes in enumerate(truth) if not any(math.isnan(v) for v in boxes[j])]
        for k in range(n_learned):
            hits[k, j] = np.mean([contains(truth[i][j], tuple(centres[i, k])) for i in rows]) if rows else math.nan
    return hits


def fit_assignment(hits: np.ndarray) -> tuple[int, ...]:
    """The one-to-one map true part j -> learned part ``a[j]`` with the most hits (fitted once
    on train, then fixed). Brute force over permutations: there are three parts."""
    n_learned, n_true = hits.shape
    h = np.nan_to_num(hits, nan=0.0)
    best = max(itertools.permutations(range(n_learned), n_true),
               key=lambda a: (sum(h[a[j], j] for j in range(n_true)), tuple(-x for x in a)))
    return tuple(int(x) for x in best)


def part_center_hit(centres: np.ndarray, truth: list[list[Box]], assignment: tuple[int, ...]) -> list[float]:
    """Per true part j, the fraction of images whose assigned learned part centre is in its box."""
    hits = hit_matrix(centres, truth)
    return [float(hits[assignment[j], j]) for j in range(len(assignment))]
