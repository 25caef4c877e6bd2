"""Stage 2 against brute force: enumeration, neighbours, scoring and selection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ghns.models.parts import FilterNet
from ghns.generate.generate import fill_class, fill_class_dense, shell_candidates, shells
from ghns.generate.neighbours import PartNeighbours, exact_neighbours
from ghns.generate.pool import ArrayPool
from ghns.generate.scoring import (PartTables, dense_scores, fit_temperature, logit_margin,
                                 score_candidates)
from ghns.generate.shuffle import full_space


def naive_sets(ref: int, labels: np.ndarray) -> set[tuple[int, int, int]]:
    """The paper's Sets, literally: triples whose class pattern is P=Q!=R, P!=Q=R, P=R!=Q or all
    distinct, whose reference-class parts are the reference's own, with at least one of them."""
    a = labels[ref]
    out = set()
    for t in itertools.product(range(len(labels)), repeat=3):
        p, q, r = (labels[i] for i in t)
        pattern = (p == q != r) or (p != q == r) or (p == r != q) or (p != q and q != r and p != r)
        own = all((i == ref) == (labels[i] == a) for i in t)
        if pattern and own and ref in t:
            out.add(t)
    return out


def problem(n_classes=4, per=3, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per)
    centres = rng.normal(size=(n_classes, 3, dim))
    emb = centres[labels] + 0.7 * rng.normal(size=(len(labels), 3, dim))
    emb /= np.linalg.norm(emb, axis=2, keepdims=True)
    return emb.astype(np.float32), labels


def test_full_space_is_the_papers_sets():
    _, labels = problem(n_classes=3, per=2)
    for ref in range(len(labels)):
        assert full_space(ref, labels) == naive_sets(ref, labels)


def test_shells_with_every_neighbour_cover_the_full_space_once():
    emb, labels = problem(n_classes=3, per=2)
    others = len(labels) - 2
    for ref in range(len(labels)):
        nb = [exact_neighbours(emb, labels, np.array([ref]), k, others) for k in range(3)]
        seen = []
        for n, r in shells(others):
            src, _, _ = shell_candidates(np.array([ref]), nb, n, r)
            seen += [tuple(s) for s in src]
        assert len(seen) == len(set(seen))  # no candidate twice
        assert set(seen) == full_space(ref, labels)


def test_faiss_neighbours_match_brute_force():
    emb, labels = problem(n_classes=5, per=4, dim=8, seed=3)
    index = PartNeighbours.build(ArrayPool(emb, labels), use_gpu=False)
    queries = np.arange(len(labels))
    for k in range(3):
        assert np.array_equal(index.search(queries, k, 6), exact_neighbours(emb, labels, queries, k, 6))
    short = index.search(queries[:1], 0, 40)  # more than the 16 other-class images: padded
    assert (short[0, 16:] == -1).all() and (short[0, :16] >= 0).all()


def linear_filternet(dim, n_classes, seed=0, scale=4.0):
    torch.manual_seed(seed)
    net = FilterNet(3, dim, n_classes)
    with torch.no_grad():
        net.net.weight.mul_(scale)
    return net.eval()


@pytest.mark.parametrize("temperature", [1.0, 3.7])
@pytest.mark.parametrize("tau", [1e-6, 0.3, 0.6, 0.9, 0.95, 0.999999])
def test_fast_scoring_keeps_exactly_what_dense_filternet_keeps(tau, temperature):
    emb, labels = problem(n_classes=5, per=4, dim=8, seed=1)
    net = linear_filternet(8, 5, seed=2)
    tables = PartTables.from_filternet(net, emb, temperature)
    index = PartNeighbours.build(ArrayPool(emb, labels), use_gpu=False)
    for target in range(5):
        refs = np.nonzero(labels == target)[0]
        nb = [index.search(refs, k, 5) for k in range(3)]
        fast = fill_class(target, refs, nb, labels, tables, per_class=25, tau=tau, k=5)
        dense = fill_class_dense(target, refs, nb, labels,
                                 lambda s: dense_scores(net, emb, s, target, temperature), 25, tau, 5)
        assert np.array_equal(fast.sources, dense.sources)
        assert np.array_equal(fast.refs, dense.refs)
        np.testing.assert_allclose(fast.scores, dense.scores, rtol=1e-9)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = 3.0 * rng.normal(size=(4000, 6))
    true_t = 2.5
    p = np.exp(logits / true_t)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(6, p=row) for row in p])
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.08)
    grid = np.exp(np.linspace(np.log(0.5), np.log(10), 2000))
    nll = [-np.mean(np.log((np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True))
                           [np.arange(len(labels)), labels])) for t in grid]
    assert fit_temperature(logits, labels) == pytest.approx(grid[int(np.argmin(nll))], rel=0.01)
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0


def test_cheap_check_is_a_necessary_condition():
    emb, labels = problem(n_classes=6, per=3, dim=8, seed=5)
    net = linear_filternet(8, 6, seed=4)
    tables = PartTables.from_filternet(net, emb)
    rng = np.random.default_rng(0)
    sources = rng.integers(0, len(labels), (400, 3))
    competitors = rng.integers(0, 6, (400, 3))
    for tau in (0.2, 0.5, 0.9):
        keep, scores, full = score_candidates(tables, sources, 0, tau, competitors)
        truth = dense_scores(net, emb, sources, 0) >= tau
        assert np.array_equal(keep, truth)
        assert full <= len(sources)
    with pytest.raises(ValueError):
        logit_margin(1.0)


def test_tau_extremes_and_budget():
    emb, labels = problem(n_classes=4, per=3, dim=8, seed=2)
    tables = PartTables.from_filternet(linear_filternet(8, 4), emb)
    index = PartNeighbours.build(ArrayPool(emb, labels), use_gpu=False)
    refs = np.nonzero(labels == 1)[0]
    nb = [index.search(refs, k, 4) for k in range(3)]
    nothing = fill_class(1, refs, nb, labels, tables, per_class=10, tau=1 - 1e-12, k=4)
    assert nothing.kept == 0 and nothing.exhausted and "pass tau" in nothing.reason(10)
    everything = fill_class(1, refs, nb, labels, tables, per_class=10, tau=1e-12, k=4)
    assert everything.kept == 10 and everything.reason(10) is None
    # 3 refs x 3 parts = 9 candidates per one-part shell: the 10th comes from the second shell,
    # and the class stops there (no later shell is expanded)
    assert everything.shells == 2 and everything.candidates == 18 and not everything.exhausted
    all_of_it = fill_class(1, refs, nb, labels, tables, per_class=10_000, tau=1e-12, k=4)
    assert all_of_it.kept == all_of_it.candidates == 3 * (3 * 4 + 3 * 16)


def test_a_class_without_other_class_neighbours():
    emb, labels = problem(n_classes=1, per=4)
    tables = PartTables.from_filternet(linear_filternet(6, 1), emb)
    refs = np.arange(4)
    nb = [exact_neighbours(emb, labels, refs, k, 3) for k in range(3)]
    res = fill_class(0, refs, nb, labels, tables, per_class=5, tau=0.5, k=3)
    assert res.kept == 0 and res.reason(5) == "no candidates: no other-class neighbours"


def test_round_robin_order_within_a_shell():
    emb, labels = problem(n_classes=3, per=2)
    refs = np.array([0, 1])
    nb = [exact_neighbours(emb, labels, refs, k, 2) for k in range(3)]
    src, ranks, ref_of = shell_candidates(refs, nb, 1, 0)
    assert ref_of.tolist() == [0, 1, 0, 1, 0, 1]
    assert [int(np.argmax(r >= 0)) for r in ranks] == [0, 0, 1, 1, 2, 2]


def test_bank_reads_when_a_class_kept_no_negatives(tmp_path):
    """A class whose candidates all failed tau writes an empty shard; the bank still reads."""
    from ghns.generate.bank import read_bank, write_shard

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(4, 3, 2)).astype(np.float32)
    ids, labels = np.arange(10, 14), np.array([0, 0, 1, 1])
    write_shard(tmp_path, 0, ids, labels, np.zeros(0, int), np.zeros((0, 3), int),
                np.zeros((0, 3), int), np.zeros(0), emb, {"kept": 0})
    write_shard(tmp_path, 1, ids, labels, np.array([2]), np.array([[2, 0, 3]]),
                np.array([[-1, 0, -1]]), np.array([0.97]), emb, {"kept": 1})
    meta, sets = read_bank(tmp_path)
    assert meta["class"].tolist() == [1] and meta["swapped"].tolist() == ["010"]
    assert sets.shape == (1, 6) and sets.flags.writeable
    np.testing.assert_array_equal(sets[0], np.concatenate([emb[2, 0], emb[0, 1], emb[3, 2]]))
