"""The replacement band and the purity figures on hand-made embeddings and banks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ghns.generate.replacements import OFF, own_spread
from ghns.generate.neighbours import PartNeighbours, exact_neighbours
from ghns.generate.pool import ArrayPool
from ghns.generate.purity import purity_figures, shell_names, similarity_figures, swap_similarities


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def variant_problem(seed=0, per=6, dim=8, noise=0.05):
    """Classes 0 and 1 share part-0 variant V (a false-negative donor for each other); class 2
    has another part-0 variant W, at cosine about 0.6 from V. Parts 1 and 2 are class-specific."""
    rng = np.random.default_rng(seed)
    v = unit(rng.normal(size=dim))
    w = unit(0.6 * v + 0.8 * unit(rng.normal(size=dim) - v * (v @ rng.normal(size=dim))))
    labels = np.repeat([0, 1, 2], per)
    centres = np.stack([unit(rng.normal(size=(3, dim))) for _ in range(3)])  # (class, part, dim)
    centres[0, 0] = centres[1, 0] = v
    centres[2, 0] = w
    emb = centres[labels] + noise * rng.normal(size=(len(labels), 3, dim))
    return unit(emb).astype(np.float32), labels


def test_own_spread_is_the_quantile_of_within_class_pairs():
    emb, labels = variant_problem()
    spread = own_spread(emb[:, 0], labels, 3, 0.5)
    for c in range(3):
        x = emb[labels == c, 0].astype(np.float64)
        pairs = [x[i] @ x[j] for i in range(len(x)) for j in range(i + 1, len(x))]
        assert spread[c] == pytest.approx(np.median(pairs))
    assert np.isinf(own_spread(emb[:, 0], labels, 3, OFF)).all()
    # a class with one image has no spread: no band for it
    assert np.isinf(own_spread(emb[:2, 0], np.array([0, 1]), 2, 0.5)).all()


def test_band_skips_the_same_variant_donor_and_keeps_the_other_variant():
    emb, labels = variant_problem()
    refs = np.nonzero(labels == 0)[0]
    nearest_first = exact_neighbours(emb, labels, refs, 0, 3)
    assert (labels[nearest_first] == 1).all()  # without a band: the same-variant class 1 first
    limit = min(own_spread(emb[:, 0], labels, 3, 0.5)[0], 0.95)
    index = PartNeighbours.build(ArrayPool(emb, labels), use_gpu=False)
    banded = index.search(refs, 0, 3, limit)
    assert (labels[banded] == 2).all()  # the band keeps only the other variant
    assert np.array_equal(banded, exact_neighbours(emb, labels, refs, 0, 3, limit))
    # per-query limits: a limit of 1.0 for the first query restores nearest-first for it alone
    mixed = index.search(refs, 0, 3, np.r_[1.0, np.full(len(refs) - 1, limit)])
    assert np.array_equal(mixed[0], nearest_first[0]) and np.array_equal(mixed[1:], banded[1:])


def hand_bank():
    """Four kept sets of class 0 (variants: class 0 = (0, 0, 0), class 1 = (0, 1, 0),
    class 2 = (1, 0, 0)); learned part k is true part k."""
    return pd.DataFrame({
        "ref_image": [10, 10, 11, 12], "class": [0, 0, 0, 0],
        "part1_image": [20, 10, 21, 30], "part1_class": [1, 0, 1, 2],
        "part2_image": [10, 30, 11, 22], "part2_class": [0, 2, 0, 1],
        "part3_image": [10, 10, 11, 12], "part3_class": [0, 0, 0, 0],
        "swapped": ["100", "010", "100", "110"],
        "rank1": [0, -1, 1, 0], "rank2": [-1, 0, -1, 1], "rank3": [-1, -1, -1, -1],
    })


def test_purity_counted_right_on_a_hand_made_bank():
    variants = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0]])
    bank = hand_bank()
    got = purity_figures(bank, variants, {0: 0, 1: 1, 2: 2}, per_class=4)
    # row 0: head from class 1, same head variant -> impure, same-variant
    # row 1: body from class 2, same body variant -> impure, same-variant
    # row 2: head from class 1 -> impure, same-variant
    # row 3: head from class 2 (other variant) and body from class 1 (other variant) -> pure
    assert got["overall"] == 0.25 and got["same_variant_rate"] == 0.75
    assert got["per_shell"] == {"1 part, rank 0": {"kept": 2, "purity": 0.0},
                                "1 part, rank 1": {"kept": 1, "purity": 0.0},
                                "2 parts, rank 1": {"kept": 1, "purity": 1.0}}
    assert got["per_class"] == {0: 0.25} and got["classes_pure"] == 0
    # with the learned parts in another order, the assignment decides which variant is compared
    swapped_parts = purity_figures(bank, variants[:, [1, 0, 2]], {0: 1, 1: 0, 2: 2})
    assert swapped_parts["overall"] == 0.25
    assert purity_figures(bank.iloc[3:], variants, {0: 0, 1: 1, 2: 2}, per_class=1)["classes_pure"] == 1
    assert list(shell_names(bank)) == ["1 part, rank 0", "1 part, rank 0", "1 part, rank 1", "2 parts, rank 1"]


def test_swap_similarity_against_the_class_spread():
    rng = np.random.default_rng(1)
    ids = [10, 11, 12, 20, 21, 22, 30]
    emb = unit(rng.normal(size=(len(ids), 3, 4)))
    row_of = {i: r for r, i in enumerate(ids)}
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    bank = hand_bank()
    sims = swap_similarities(bank, row_of, emb)
    assert np.isnan(sims[0, 1]) and np.isnan(sims[0, 2])
    assert sims[0, 0] == pytest.approx(emb[row_of[10], 0] @ emb[row_of[20], 0])
    assert sims[3, 1] == pytest.approx(emb[row_of[12], 1] @ emb[row_of[22], 1])
    figures = similarity_figures(bank, row_of, emb, labels)
    assert figures["part1"]["swaps"] == 3 and figures["part2"]["swaps"] == 2
    assert figures["part3"]["swaps"] == 0 and figures["part3"]["swapped"] is None
    own = emb[:3, 0] @ emb[:3, 0].T
    median0 = np.median(own[np.triu_indices(3, 1)])
    inside = np.mean([sims[r, 0] >= median0 for r in (0, 2, 3)])
    assert figures["part1"]["inside_own_spread"] == pytest.approx(inside, abs=1e-4)


def composed_problem(seed=0, per=5, dim=10, noise=0.05):
    """Classes made of part variants: A = (h0, b0, t0), B = (h1, b0, t0) differs from A in the
    head only, C = (h0, b1, t0) in the body only, D = (h1, b1, t1) everywhere."""
    rng = np.random.default_rng(seed)
    variants = unit(rng.normal(size=(3, 2, dim)))  # (part, variant, dim)
    classes = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]])
    labels = np.repeat(np.arange(4), per)
    emb = np.stack([variants[k, classes[labels, k]] for k in range(3)], axis=1)
    emb = unit(emb + noise * rng.normal(size=emb.shape)).astype(np.float32)
    return emb, labels


def test_donor_classes_are_like_the_class_elsewhere_and_unlike_it_on_the_part():
    from ghns.generate.replacements import class_centroids, donor_classes, donor_scores

    emb, labels = composed_problem()
    cen = class_centroids(emb, labels, 4)
    assert np.allclose(np.linalg.norm(cen, axis=2), 1.0)
    # replacing A's head: B (same body and tail, another head) is the best donor
    assert donor_classes(cen, 0, 0, 1).tolist() == [1]
    # replacing A's body: C
    assert donor_classes(cen, 0, 1, 1).tolist() == [2]
    scores = donor_scores(cen, 0, 0)
    sims = np.einsum("pcd,pd->pc", cen, cen[:, 0])
    assert scores[3] == pytest.approx(min(sims[1, 3], sims[2, 3]) - sims[0, 3])
    assert scores[0] == -np.inf and donor_classes(cen, 0, 0, 0) is None
    many = donor_classes(cen, 0, 0, 10).tolist()
    # never A itself, never C: C shares A's head, so swapping in C's head changes nothing
    assert 1 in many and 0 not in many and 2 not in many
    assert (donor_scores(cen, 0, 0)[many] > 0).all()


def test_donor_replacements_match_brute_force_search_over_the_donors():
    from ghns.generate.replacements import Replacements, class_centroids, donor_classes

    emb, labels = composed_problem(per=6)
    pool = ArrayPool(emb, labels)
    cen = class_centroids(emb, labels, 4)
    repl = Replacements(pool, 4, max_similarity=0.9, donors=2)
    refs = np.nonzero(labels == 0)[0]
    for part, got in enumerate(repl.lists(0, refs)):
        allowed = np.nonzero(np.isin(labels, donor_classes(cen, 0, part, 2)))[0]
        assert np.array_equal(got, exact_neighbours(emb, labels, refs, part, 4, 0.9, allowed))
        assert np.isin(labels[got[got >= 0]], donor_classes(cen, 0, part, 2)).all()
    # the every-class rule goes through the part index, with the same order
    every = Replacements(pool, 4, max_similarity=0.9, index=PartNeighbours.build(pool, use_gpu=False))
    for part, got in enumerate(every.lists(0, refs)):
        assert np.array_equal(got, exact_neighbours(emb, labels, refs, part, 4, 0.9))
    with pytest.raises(ValueError):
        Replacements(pool, 4)  # every class needs an index
