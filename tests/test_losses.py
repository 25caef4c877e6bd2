"""Losses against brute-force loops."""

from __future__ import annotations

import itertools

import pytest
import torch

from ghns.losses import part_compactness, part_presence, part_separation


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
