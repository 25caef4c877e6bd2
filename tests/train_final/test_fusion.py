from __future__ import annotations

import numpy as np
import pytest

from ghns.fusion import (INVERSE_TEMPERATURE, Fusion, choose_fusion, confused_pairs, fit_inverse_temperature,
                         fuse, fuse_loglinear, search_weights, tempered_nll, topk_accuracy, weight_grid)


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


def test_temperature_fit_matches_brute_force():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 200)
    logits = rng.normal(size=(200, 6)) + 3.0 * np.eye(6)[labels]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    beta = fit_inverse_temperature(p, labels)
    grid = np.exp(np.linspace(np.log(INVERSE_TEMPERATURE[0]), np.log(INVERSE_TEMPERATURE[1]), 20001))
    brute = min(grid, key=lambda b: tempered_nll(p, labels, b))
    assert beta == pytest.approx(brute, rel=1e-3)
    assert tempered_nll(p, labels, beta) <= tempered_nll(p, labels, brute) + 1e-9


def test_temperature_recovers_a_known_one():
    # labels drawn from softmax(z): scores softmax(3 z) are over-confident by T = 3
    rng = np.random.default_rng(2)
    z = rng.normal(size=(20000, 5))
    true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = (true.cumsum(1) > rng.random((20000, 1))).argmax(1)
    sharp = np.exp(3 * z) / np.exp(3 * z).sum(1, keepdims=True)
    assert 1 / fit_inverse_temperature(sharp, labels) == pytest.approx(3.0, rel=0.05)
    # scores that know nothing of the labels get the flattest temperature allowed
    noise = rng.dirichlet(np.ones(5), 20000)
    assert fit_inverse_temperature(noise, labels) == pytest.approx(INVERSE_TEMPERATURE[0], rel=0.05)


def test_loglinear_fusion_is_a_tempered_product():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 50)
    scores = [rng.dirichlet(np.ones(4), 50) for _ in range(3)]
    fusion = choose_fusion(scores, labels, "loglinear")
    assert fusion.rule == "loglinear" and len(fusion.values) == 3
    fused = fusion(scores)
    np.testing.assert_allclose(fused.sum(1), 1.0)
    product = np.prod([s ** (1 / t) for s, t in zip(scores, fusion.values)], axis=0)
    np.testing.assert_allclose(fused, product / product.sum(1, keepdims=True), rtol=1e-9)
    assert sum(fusion.weights) == pytest.approx(1.0, abs=1e-3)  # the contract's weights rank alike
    by_weights = sum(w * np.log(s) for w, s in zip(fusion.weights, scores))
    assert (by_weights.argmax(1) == fused.argmax(1)).all()
    assert Fusion.from_dict(fusion.describe()) == Fusion("loglinear", tuple(round(t, 4) for t in fusion.values))
    grid = choose_fusion(scores, labels, "grid", 0.1)
    assert grid == Fusion("grid", search_weights(scores, labels, 0.1)[0])
    np.testing.assert_allclose(grid(scores), fuse(scores, grid.values))
    with pytest.raises(ValueError, match="unknown fusion rule"):
        choose_fusion(scores, labels, "mean")


def test_uninformative_classifier_cannot_move_the_loglinear_argmax():
    labels = np.arange(40) % 4
    good = np.full((40, 4), 0.1)
    good[np.arange(40), labels] = 0.7
    flat = np.full((40, 4), 0.25)
    fused = fuse_loglinear([good, flat], (1.0, 5.0))
    assert topk_accuracy(fused, labels) == 100.0
