"""The linear probe: multinomial logistic regression on standardised frozen features.

It is the simplest strong baseline of every classifier in this package (``benchmarks/
linear_probe.py`` measures it) and, since the LP-FT recipe (Kumar et al., ICLR 2022: "linear
probe, then fine-tune"), also their starting point: the heads of the parts classifier and of the
image classifiers start from the probe's solution, so fine-tuning starts where the baseline ends.

Pure torch, deterministic: zero initialisation, full-batch L-BFGS with a strong-Wolfe line
search, ``mean cross-entropy + l2 * ||W||^2``; the L2 strength is chosen on val (ties: the
stronger L2, the simpler model: on 150 validation images most strengths tie).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

L2_GRID = (1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


@dataclass
class Probe:
    """A fitted probe: ``logits = ((x - mean) / std) @ weight.T + bias``."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor    # (C,)
    mean: torch.Tensor    # (D,)
    std: torch.Tensor     # (D,)
    l2: float
    val_accuracy: float   # percent; NaN without a val split

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return standardise(x, self.mean, self.std) @ self.weight.T + self.bias


def standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / std


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float,
                 steps: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on ``x`` (already standardised): (weight, bias)."""
    weight = torch.zeros(classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor | None,
              val_y: torch.Tensor | None, classes: int, grid: tuple[float, ...] = L2_GRID) -> Probe:
    """The probe of ``train_x``, its L2 strength chosen on val (the grid's middle without val)."""
    train_x = train_x.float()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs = standardise(train_x, mean, std)
    if val_x is None or val_y is None or len(val_y) == 0:
        weight, bias = fit_logistic(xs, train_y, classes, grid[len(grid) // 2])
        return Probe(weight, bias, mean, std, grid[len(grid) // 2], float("nan"))
    best: tuple[tuple[float, float], Probe] | None = None
    for l2 in grid:
        weight, bias = fit_logistic(xs, train_y, classes, l2)
        probe = Probe(weight, bias, mean, std, l2, float("nan"))
        with torch.no_grad():
            logp = probe.logits(val_x.float()).log_softmax(1)
        acc = 100.0 * (logp.argmax(1) == val_y).float().mean().item()
        key = (acc, l2)
        if best is None or key > best[0]:
            probe.val_accuracy = acc
            best = (key, probe)
    assert best is not None, "an empty L2 grid"
    return best[1]
