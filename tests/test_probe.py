"""The linear probe: its solution is the optimum of its objective (gradient ~ 0, checked by
autograd on the objective written out), its L2 strength is the val-best of the grid, and it is
deterministic."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from ghns.probe import fit_logistic, fit_probe, standardise


def blobs(seed: int, n: int, classes: int = 3, dim: int = 5):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 2
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, dim, generator=g) * 1.5 + 10.0, y


def test_solution_is_the_optimum_of_the_objective():
    x, y = blobs(0, 60)
    xs = standardise(x, x.mean(0), x.std(0))
    l2 = 1e-2
    weight, bias = fit_logistic(xs, y, 3, l2)
    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True)
    loss = F.cross_entropy(xs @ w.T + b, y) + l2 * w.pow(2).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert gw.abs().max() < 1e-4 and gb.abs().max() < 1e-4
    # and a nudge in any direction does not lower the objective
    for _ in range(5):
        d = torch.randn_like(w) * 1e-2
        assert F.cross_entropy(xs @ (w + d).T.detach() + b.detach(), y) + l2 * (w + d).pow(2).sum() >= loss - 1e-6


def test_l2_is_chosen_on_val_and_the_fit_is_deterministic():
    x, y = blobs(1, 90)
    vx, vy = blobs(2, 30)
    grid = (1e-4, 1e-1, 10.0)
    probe = fit_probe(x, y, vx, vy, 3, grid)
    accs = []
    for l2 in grid:
        one = fit_probe(x, y, vx, vy, 3, (l2,))
        accs.append(one.val_accuracy)
    assert probe.val_accuracy == pytest.approx(max(accs))
    assert probe.l2 in [g for g, a in zip(grid, accs) if a == max(accs)]
    again = fit_probe(x, y, vx, vy, 3, grid)
    assert torch.equal(again.weight, probe.weight) and torch.equal(again.bias, probe.bias)
    with torch.no_grad():
        direct = 100.0 * (probe.logits(vx).argmax(1) == vy).float().mean().item()
    assert direct == pytest.approx(probe.val_accuracy)


def test_without_val_the_middle_of_the_grid_is_used():
    x, y = blobs(3, 30)
    probe = fit_probe(x, y, None, None, 3, (1e-4, 1e-2, 1.0))
    assert probe.l2 == 1e-2 and probe.val_accuracy != probe.val_accuracy  # NaN
