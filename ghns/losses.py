"""Losses as pure functions of tensors (no model, no Ray): each is tested against a brute-force
loop in ``tests/test_losses.py``.
"""

from __future__ import annotations

import torch


# -- part discovery regularisers (localization) ------------------------------------------------

def part_presence(assign: torch.Tensor, level: float = 0.8) -> torch.Tensor:
    """Every part should appear in every image: mean of ``relu(level - max_x a_k(x))`` over
    images and parts. ``assign``: (N, K, h, w) part assignment maps (background excluded)."""
    return torch.relu(level - assign.amax(dim=(2, 3))).mean()


def part_compactness(assign: torch.Tensor) -> torch.Tensor:
    """Each part should be one compact region: the mean spatial variance of each part's
    assignment mass, in coordinates normalised to [0, 1] (SCOPS-style concentration)."""
    n, k, h, w = assign.shape
    ys = torch.linspace(0, 1, h, device=assign.device).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w, device=assign.device).view(1, 1, 1, w)
    mass = assign.sum(dim=(2, 3)).clamp_min(1e-6)
    my = (assign * ys).sum(dim=(2, 3)) / mass
    mx = (assign * xs).sum(dim=(2, 3)) / mass
    var = (assign * ((ys - my[..., None, None]) ** 2 + (xs - mx[..., None, None]) ** 2)).sum(dim=(2, 3))
    return (var / mass).mean()


def part_separation(assign: torch.Tensor, min_distance: float = 0.2) -> torch.Tensor:
    """Parts should not sit on one spot: mean over images and part pairs of
    ``relu(min_distance - |centre_k - centre_j|)``, centres of mass in [0, 1] coordinates."""
    n, k, h, w = assign.shape
    ys = torch.linspace(0, 1, h, device=assign.device).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w, device=assign.device).view(1, 1, 1, w)
    mass = assign.sum(dim=(2, 3)).clamp_min(1e-6)
    centres = torch.stack([(assign * xs).sum(dim=(2, 3)) / mass,
                           (assign * ys).sum(dim=(2, 3)) / mass], dim=-1)  # (N, K, 2)
    dist = torch.cdist(centres, centres)  # (N, K, K)
    pairs = torch.triu(torch.ones(k, k, dtype=torch.bool, device=assign.device), diagonal=1)
    if not pairs.any():
        return assign.sum() * 0.0
    return torch.relu(min_distance - dist[:, pairs]).mean()
