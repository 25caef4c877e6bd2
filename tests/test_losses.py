"""Losses against brute-force loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ghns.losses import (
    batch_hardest,
    parts_metric_loss,
    adversarial_loss,
    part_area,
    part_compactness,
    part_presence,
    part_separation,
    quadruplet_loss,
    shuffled_sets,
    triplet_loss,
)


def maps(seed=0, n=3, k=3, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, k, h, w, generator=g)


def test_part_presence_brute_force():
    a = maps()
    expected = sum(max(0.0, 0.8 - a[i, k].max().item()) for i in range(3) for k in range(3)) / 9
    assert part_presence(a, 0.8).item() == pytest.approx(expected)


def test_part_compactness_brute_force():
    a = maps()
    n, k, h, w = a.shape
    total = 0.0
    for i, j in itertools.product(range(n), range(k)):
        m = a[i, j]
        pts = [(x / (w - 1), y / (h - 1), m[y, x].item()) for y in range(h) for x in range(w)]
        mass = sum(p[2] for p in pts)
        mx = sum(p[0] * p[2] for p in pts) / mass
        my = sum(p[1] * p[2] for p in pts) / mass
        total += sum(((p[0] - mx) ** 2 + (p[1] - my) ** 2) * p[2] for p in pts) / mass
    assert part_compactness(a).item() == pytest.approx(total / (n * k), rel=1e-5)


def test_a_point_part_is_perfectly_compact():
    a = torch.zeros(1, 1, 4, 4)
    a[0, 0, 2, 1] = 1.0
    assert part_compactness(a).item() == pytest.approx(0.0, abs=1e-7)


def test_part_area_brute_force_and_zero_when_wide():
    a = maps(seed=5) * 0.1
    n, k, h, w = a.shape
    expected = sum(max(0.0, 0.05 - a[i, j].sum().item() / (h * w)) for i in range(n) for j in range(k))
    assert part_area(a, 0.05).item() == pytest.approx(expected / (n * k), rel=1e-5)
    assert part_area(torch.ones(2, 3, 4, 4), 0.5).item() == 0.0


def test_part_separation_brute_force_and_zero_when_apart():
    a = maps(seed=3)
    n, k, h, w = a.shape
    expected, pairs = 0.0, 0
    for i in range(n):
        centres = []
        for j in range(k):
            m = a[i, j]
            mass = m.sum().item()
            cx = sum(x / (w - 1) * m[y, x].item() for y in range(h) for x in range(w)) / mass
            cy = sum(y / (h - 1) * m[y, x].item() for y in range(h) for x in range(w)) / mass
            centres.append((cx, cy))
        for p, q in itertools.combinations(range(k), 2):
            d = ((centres[p][0] - centres[q][0]) ** 2 + (centres[p][1] - centres[q][1]) ** 2) ** 0.5
            expected += max(0.0, 0.5 - d)
            pairs += 1
    assert part_separation(a, 0.5).item() == pytest.approx(expected / pairs, rel=1e-5)
    apart = torch.zeros(1, 2, 5, 5)
    apart[0, 0, 0, 0] = apart[0, 1, 4, 4] = 1.0
    assert part_separation(apart, 0.5).item() == 0.0
    assert part_separation(torch.rand(2, 1, 3, 3)).item() == 0.0  # one part: no pairs


# -- triplet loss (Eq. 2) ------------------------------------------------------------------------

def sqd(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b))


def triplet_oracle(emb, labels, margin, mining):
    e = emb.tolist()
    lab = labels.tolist()
    n = len(lab)
    if mining == "all":
        vals = [0.5 * max(0.0, sqd(e[r], e[p]) - sqd(e[r], e[q]) + margin)
                for r in range(n) for p in range(n) for q in range(n)
                if r != p and lab[r] == lab[p] and lab[q] != lab[r]]
    else:
        vals = []
        for r in range(n):
            ps = [sqd(e[r], e[p]) for p in range(n) if p != r and lab[p] == lab[r]]
            ns = [sqd(e[r], e[q]) for q in range(n) if lab[q] != lab[r]]
            if ps and ns:
                vals.append(0.5 * max(0.0, max(ps) - min(ns) + margin))
    return sum(vals) / len(vals) if vals else 0.0


@pytest.mark.parametrize("mining", ["all", "hard"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_loss_brute_force(mining, seed):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(9, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 1])  # class 3 has a single image
    for margin in (0.1, 1.0, 5.0):
        got = triplet_loss(emb, labels, margin, mining=mining)
        assert got.dim() == 0
        assert got.item() == pytest.approx(triplet_oracle(emb, labels, margin, mining), rel=1e-9, abs=1e-12)


def test_triplet_loss_hard_is_at_least_all_on_average_and_has_grad():
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(8, 3, generator=g, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    hard = triplet_loss(emb, labels, 1.0, mining="hard")
    assert hard.item() >= triplet_loss(emb, labels, 1.0, mining="all").item() - 1e-6
    hard.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("mining", ["all", "hard"])
@pytest.mark.parametrize("labels", [[4, 4, 4, 4], [7], [0, 1, 2, 3]], ids=["one-class", "one-image", "distinct"])
def test_triplet_loss_degenerate_batches_are_zero_with_grad(mining, labels):
    emb = torch.randn(len(labels), 3, requires_grad=True)
    loss = triplet_loss(emb, torch.tensor(labels), 1.0, mining=mining)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert emb.grad is not None and (emb.grad == 0).all()


def test_triplet_loss_unknown_mining():
    with pytest.raises(ValueError):
        triplet_loss(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), 1.0, mining="semi")


# -- shuffled sets (Eq. 5) -----------------------------------------------------------------------

def test_shuffled_sets_shapes_labels_and_replacements():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 7):
        for _ in range(20):
            idx, lab = shuffled_sets(n, g)
            assert idx.shape == (2 * n, 3) and idx.dtype == torch.long
            assert lab.shape == (2 * n,) and lab.dtype == torch.float32
            assert ((idx >= 0) & (idx < n)).all()
            for row, y in zip(idx.tolist(), lab.tolist()):
                assert y == (0.0 if row[0] == row[1] == row[2] else 1.0)
            assert idx[:n].tolist() == [[i, i, i] for i in range(n)]
            assert (lab[:n] == 0).all() and (lab[n:] == 1).all()
            for i, row in enumerate(idx[n:].tolist()):
                replaced = [k for k in range(3) if row[k] != i]
                assert 1 <= len(replaced) <= 2
                assert i in row  # the reference image keeps at least one part


def test_shuffled_sets_all_six_subsets_and_all_sources_occur():
    g = torch.Generator().manual_seed(1)
    n = 4
    subsets, sources = set(), set()
    for _ in range(300):
        idx, _ = shuffled_sets(n, g)
        for i, row in enumerate(idx[n:].tolist()):
            subsets.add(tuple(row[k] != i for k in range(3)))
            sources.update((i, row[k]) for k in range(3) if row[k] != i)
    assert len(subsets) == 6
    assert sources == {(i, j) for i in range(n) for j in range(n) if i != j}


def test_shuffled_sets_deterministic_and_small_n():
    a = shuffled_sets(6, torch.Generator().manual_seed(42))
    b = shuffled_sets(6, torch.Generator().manual_seed(42))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    idx, lab = shuffled_sets(1, torch.Generator().manual_seed(0))
    assert idx.tolist() == [[0, 0, 0]] and lab.tolist() == [0.0]
    idx, lab = shuffled_sets(2, torch.Generator().manual_seed(0))
    assert idx.shape == (4, 3)
    idx, lab = shuffled_sets(0)
    assert idx.shape == (0, 3) and lab.shape == (0,)


# -- adversarial loss (Eq. 6) --------------------------------------------------------------------

def test_adversarial_loss_is_bce_with_logits():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(10, generator=g, dtype=torch.float64) * 3
    labels = (torch.rand(10, generator=g) > 0.5).double()
    expected = 0.0
    for x, y in zip(logits.tolist(), labels.tolist()):
        s = 1.0 / (1.0 + math.exp(-x))
        expected -= y * math.log(s) + (1 - y) * math.log(1 - s)
    assert adversarial_loss(logits, labels).item() == pytest.approx(expected / 10, rel=1e-9)
    x = logits.clone().requires_grad_(True)
    adversarial_loss(x, labels).backward()
    assert x.grad is not None


# -- quadruplet loss (Eq. 9) ---------------------------------------------------------------------

def test_quadruplet_loss_brute_force():
    g = torch.Generator().manual_seed(4)
    r, p, npl, n = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4))
    for m1, m2 in ((1.0, 0.5), (4.0, 2.0), (0.3, 0.1)):
        expected = 0.0
        for i in range(6):
            a, b, c, d = r[i].tolist(), p[i].tolist(), npl[i].tolist(), n[i].tolist()
            expected += 0.5 * max(0.0, sqd(a, b) - sqd(a, c) + m1 - m2)
            expected += 0.5 * max(0.0, sqd(a, c) - sqd(a, d) + m2)
        got = quadruplet_loss(r, p, npl, n, m1, m2)
        assert got.item() == pytest.approx(expected / 6, rel=1e-9, abs=1e-12)


def test_quadruplet_loss_margins_and_empty_batch():
    x = torch.randn(2, 3)
    for m1, m2 in ((0.5, 0.5), (0.5, 1.0), (1.0, 0.0), (1.0, -0.5)):
        with pytest.raises(ValueError):
            quadruplet_loss(x, x, x, x, m1, m2)
    e = torch.zeros(0, 3, requires_grad=True)
    loss = quadruplet_loss(e, e, e, e, 1.0, 0.5)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()


def test_batch_hardest_brute_force():
    torch.manual_seed(4)
    f = torch.randn(9, 5)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 0, 3, 2])
    pos, neg = batch_hardest(f, y)
    for i in range(len(y)):
        d = [float(((f[i] - f[j]) ** 2).sum()) for j in range(len(y))]
        same = [j for j in range(len(y)) if y[j] == y[i] and j != i]
        other = [j for j in range(len(y)) if y[j] != y[i]]
        want_pos = max(same, key=lambda j: (d[j], -j)) if same else i
        want_neg = min(other, key=lambda j: (d[j], j))
        assert pos[i] == want_pos and neg[i] == want_neg
    # class 3 has one image: its positive is itself; a single-class batch's negative is its farthest row
    pos1, neg1 = batch_hardest(f[:2], torch.tensor([0, 0]))
    assert pos1.tolist() == [1, 0] and neg1.tolist() == [1, 0]


# -- Eq. 10's metric term (the parts classifier) ----------------------------------------------

def brute_metric(f, y, f_plus, anchors, m1, m2, per_anchor):
    p_idx, n_idx = batch_hardest(f, y)
    d = lambda a, b: float(((a - b) ** 2).sum())  # noqa: E731
    total = 0.0
    for i in range(len(y)):
        rows = [j for j, a in enumerate(anchors) if a == i]
        r, p, n = f[i], f[p_idx[i]], f[n_idx[i]]
        if rows:
            for j in rows:
                total += (0.5 * max(0.0, d(r, p) - d(r, f_plus[j]) + m1 - m2)
                          + 0.5 * max(0.0, d(r, f_plus[j]) - d(r, n) + m2)) / per_anchor
        else:
            total += 0.5 * max(0.0, d(r, p) - d(r, n) + m1)
    return total / len(y)


@pytest.mark.parametrize("per_anchor", [1, 2])
def test_metric_term_brute_force(per_anchor):
    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    anchors = np.repeat(np.array([0, 3, 5]), per_anchor)
    f_plus = torch.nn.functional.normalize(torch.randn(len(anchors), 4), dim=1)
    got = parts_metric_loss(f, y, f_plus, anchors, 0.4, 0.2, per_anchor)
    assert got.item() == pytest.approx(brute_metric(f, y, f_plus, anchors, 0.4, 0.2, per_anchor), rel=1e-5)
    none = parts_metric_loss(f, y, f_plus[:0], np.zeros(0, np.int64), 0.4, 0.2)
    assert none.item() == pytest.approx(brute_metric(f, y, f_plus[:0], [], 0.4, 0.2, 1), rel=1e-5)


def test_mined_negatives_equal_a_brute_force_search():
    from ghns.losses import mined_negatives

    torch.manual_seed(0)
    f = torch.randn(14, 5)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3, 4, 4])
    anchors, n_plus, n = mined_negatives(f, y)
    expected = []
    for r in range(len(y)):
        d = [float(((f[r] - f[j]) ** 2).sum()) for j in range(len(y))]
        others = [j for j in range(len(y)) if y[j] != y[r]]
        if not others:
            continue
        hard = min(others, key=lambda j: (d[j], j))
        third = [j for j in others if y[j] != y[hard]]
        if third:
            expected.append((r, hard, min(third, key=lambda j: (d[j], j))))
    assert list(zip(anchors.tolist(), n_plus.tolist(), n.tolist())) == expected
    # two classes only: no third class, no quadruplet
    a, _, _ = mined_negatives(f[:4], y[:4])
    assert len(a) == 0


def test_mined_metric_loss_against_its_definition():
    from ghns.losses import mined_metric_loss, mined_negatives

    torch.manual_seed(1)
    f = torch.nn.functional.normalize(torch.randn(12, 6), dim=1)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    anchors, n_plus, n = mined_negatives(f, y)
    total = 0.0
    for a, np_, nn_ in zip(anchors, n_plus, n):
        same = [j for j in range(12) if y[j] == y[a] and j != a]
        p = max(same, key=lambda j: (float(((f[a] - f[j]) ** 2).sum()), -j))
        dp, dnp, dn = (float(((f[a] - f[j]) ** 2).sum()) for j in (p, np_, nn_))
        total += 0.5 * max(0.0, dp - dnp + 0.4 - 0.2) + 0.5 * max(0.0, dnp - dn + 0.2)
    assert len(anchors) == 12
    assert float(mined_metric_loss(f, y, 0.4, 0.2)) == pytest.approx(total / 12, abs=1e-5)


def test_not_class_and_uniform_losses_against_direct_formulas():
    from ghns.losses import not_class_loss, uniform_loss

    torch.manual_seed(2)
    logits = torch.randn(6, 4) * 3
    classes = torch.tensor([0, 1, 2, 3, 0, 2])
    p = logits.softmax(1)
    direct = -torch.log(1 - p[torch.arange(6), classes]).mean()
    assert float(not_class_loss(logits, classes)) == pytest.approx(float(direct), rel=1e-5)
    assert float(uniform_loss(logits)) == pytest.approx(float(-(logits.log_softmax(1)).mean()), rel=1e-6)
    # stable where the class takes almost all the mass
    sure = torch.tensor([[60.0, 0.0, 0.0]])
    assert math.isfinite(float(not_class_loss(sure, torch.tensor([0]))))
    assert float(not_class_loss(logits[:0], classes[:0])) == 0.0
