from __future__ import annotations

import numpy as np
import pytest

from ghns.fusion import confused_pairs, fuse, search_weights, topk_accuracy, weight_grid


def test_grid_has_every_triple_summing_to_one():
    grid = weight_grid(3, 0.05)
    assert len(grid) == 231 and all(abs(sum(w) - 1) < 1e-9 for w in grid)
    assert (0.3, 0.3, 0.4) in grid and len(weight_grid(2, 0.25)) == 5


def test_known_optimum_needs_two_classifiers():
    # classifier A is right (confidently) on the first half, B on the second half; C is wrong.
    # Only weights giving A and B equal say, and C less, get every sample right.
    n, classes = 8, 4
    labels = np.arange(n) % classes
    a = np.full((n, classes), 0.1)
    b = np.full((n, classes), 0.1)
    c = np.full((n, classes), 0.1)
    for i, y in enumerate(labels):
        wrong = (y + 1) % classes
        if i < n // 2:
            a[i, y], b[i, wrong] = 0.6, 0.35
        else:
            b[i, y], a[i, wrong] = 0.6, 0.35
        c[i, (y + 2) % classes] = 0.7
    weights, acc = search_weights([a, b, c], labels, 0.05)
    assert acc == 100.0
    assert weights == (0.5, 0.5, 0.0)  # ties at 100% broken by the lowest NLL


def test_search_matches_brute_force_over_the_grid():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 60)
    scores = [rng.dirichlet(np.ones(5), 60) for _ in range(3)]
    weights, acc = search_weights(scores, labels, 0.1)
    rows = np.arange(len(labels))
    brute = max(weight_grid(3, 0.1), key=lambda w: (
        topk_accuracy(fuse(scores, w), labels),
        np.mean(np.log(fuse(scores, w)[rows, labels]))))
    assert weights == brute and acc == topk_accuracy(fuse(scores, brute), labels)


def test_topk_and_confusions():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(100 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(200 / 3)
    pairs = confused_pairs(scores, labels, ["a", "b", "c"])
    assert pairs == [{"classes": ["a", "b"], "errors": 1}, {"classes": ["a", "c"], "errors": 1}]
