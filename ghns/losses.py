"""Losses as pure functions of tensors (no model, no Ray): each is tested against a brute-force
loop in ``tests/test_losses.py``.
"""

from __future__ import annotations

import numpy as np
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


def part_area(assign: torch.Tensor, min_area: float = 0.06) -> torch.Tensor:
    """Every part should cover a region, not a point: mean over images and parts of
    ``relu(min_area - mass_k / (h w))``, the part's share of the map below ``min_area``."""
    h, w = assign.shape[-2:]
    return torch.relu(min_area - assign.sum(dim=(2, 3)) / (h * w)).mean()


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


# -- metric and adversarial losses (paper Eq. 2, 5, 6, 9) --------------------------------------

def _sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances (N, N), exact zeros on the diagonal."""
    diff = x[:, None, :] - x[None, :, :]
    return (diff * diff).sum(dim=-1)


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float,
                 mining: str = "all") -> torch.Tensor:
    """Triplet loss of paper Eq. 2: mean of 0.5 * max(0, d(r, p) - d(r, n) + margin), d squared L2."""
    if mining not in ("all", "hard"):
        raise ValueError(f"unknown mining {mining!r}; expected 'all' or 'hard'")
    n = embeddings.shape[0]
    labels = labels.view(-1)
    d = _sq_dists(embeddings)  # (N, N)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    pos = same & ~eye  # (r, p)
    neg = ~same  # (r, n)
    if mining == "all":
        valid = pos[:, :, None] & neg[:, None, :]  # (r, p, n)
        if not valid.any():
            return embeddings.sum() * 0.0
        losses = 0.5 * torch.relu(d[:, :, None] - d[:, None, :] + margin)
        return losses[valid].mean()
    anchors = pos.any(dim=1) & neg.any(dim=1)
    if not anchors.any():
        return embeddings.sum() * 0.0
    hardest_pos = d.masked_fill(~pos, float("-inf")).amax(dim=1)
    hardest_neg = d.masked_fill(~neg, float("inf")).amin(dim=1)
    losses = 0.5 * torch.relu(hardest_pos[anchors] - hardest_neg[anchors] + margin)
    return losses.mean()


def batch_hardest(f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor, the index of its farthest same-class row (itself when it has none) and its
    nearest other-class row (its farthest row when the batch has no other class); squared L2,
    ties to the lower index."""
    d = torch.cdist(f, f).pow(2).detach()
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    pos = torch.where(same & ~eye, d, torch.full_like(d, -1.0)).argmax(1)
    pos = torch.where((same & ~eye).any(1), pos, torch.arange(len(y), device=y.device))
    neg = torch.where(~same, d, torch.full_like(d, float("inf"))).argmin(1)
    neg = torch.where((~same).any(1), neg, d.argmax(1))
    return pos, neg


# The 6 non-empty proper subsets of the 3 parts, as replace masks (True = part taken from another image).
_SUBSETS = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1],
                         [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)


def shuffled_sets(n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Part-index triples for the adversarial sets of paper Eq. 5: label 0 iff (i, i, i), else 1."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    ref = torch.arange(n, dtype=torch.long)
    rows = ref[:, None].expand(n, 3).clone()
    labels = torch.zeros(n)
    if n < 2:
        return rows, labels
    masks = _SUBSETS[torch.randint(0, len(_SUBSETS), (n,), generator=generator)]  # (n, 3)
    other = torch.randint(0, n - 1, (n, 3), generator=generator)
    other = other + (other >= ref[:, None]).long()  # uniform over the other n-1 images
    shuffled = torch.where(masks, other, ref[:, None].expand(n, 3))
    return torch.cat([rows, shuffled]), torch.cat([labels, torch.ones(n)])


def adversarial_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Adversarial loss of paper Eq. 6: mean binary cross-entropy with logits (1 = shuffled set)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def quadruplet_loss(r: torch.Tensor, p: torch.Tensor, n_plus: torch.Tensor, n: torch.Tensor,
                    m1: float, m2: float) -> torch.Tensor:
    """Quadruplet loss of paper Eq. 9 (mean over rows), requires m1 > m2 > 0."""
    if not (m1 > m2 > 0):
        raise ValueError(f"quadruplet margins must satisfy m1 > m2 > 0, got m1={m1}, m2={m2}")
    if r.shape[0] == 0:
        return (r.sum() + p.sum() + n_plus.sum() + n.sum()) * 0.0
    d_p = ((r - p) ** 2).sum(dim=-1)
    d_np = ((r - n_plus) ** 2).sum(dim=-1)
    d_n = ((r - n) ** 2).sum(dim=-1)
    first = 0.5 * torch.relu(d_p - d_np + m1 - m2)
    second = 0.5 * torch.relu(d_np - d_n + m2)
    return (first + second).mean()


def parts_metric_loss(f: torch.Tensor, y: torch.Tensor, f_plus: torch.Tensor, anchors: np.ndarray,
                      m1: float, m2: float, per_anchor: int = 1) -> torch.Tensor:
    """The metric term of Eq. 10 over a batch, summed per anchor and averaged over the batch.

    Anchors with an n+ (``anchors``, row i of ``f_plus`` is an n+ of ``anchors[i]``; an anchor
    appears ``per_anchor`` times) take the quadruplet loss (Eq. 9), averaged over their n+, with
    their batch-hardest positive p and negative n; the other anchors take the triplet (r, p, n)
    with margin m1, the quadruplet's outer constraint."""
    p_idx, n_idx = batch_hardest(f, y)
    has = torch.zeros(len(y), dtype=torch.bool)
    has[torch.from_numpy(anchors)] = True
    total = f.sum() * 0.0
    if len(anchors):
        a = torch.from_numpy(anchors).to(f.device)
        total = total + quadruplet_loss(f[a], f[p_idx[a]], f_plus, f[n_idx[a]], m1, m2) * len(anchors) / per_anchor
    return (total + _triplet_sum(f, p_idx, n_idx, ~has, m1)) / len(y)


def _triplet_sum(f: torch.Tensor, p_idx: torch.Tensor, n_idx: torch.Tensor, rows: torch.Tensor,
                 margin: float) -> torch.Tensor:
    """Sum over the anchors ``rows`` (a boolean mask) of the triplet term 0.5 max(0, d(r, p) -
    d(r, n) + margin) with their batch-hardest p and n."""
    rest = torch.nonzero(rows).flatten().to(f.device)
    if not len(rest):
        return f.sum() * 0.0
    d_ap = (f[rest] - f[p_idx[rest]]).pow(2).sum(1)
    d_an = (f[rest] - f[n_idx[rest]]).pow(2).sum(1)
    return (0.5 * torch.relu(d_ap - d_an + margin)).sum()


def mined_negatives(f: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mined-negative arm's quadruplets, from real images of the batch only: per anchor r, n+
    is its nearest other-class row (the batch-hard negative) and n its nearest row of a third
    class (neither r's nor n+'s), so n+ is the harder of the two as Eq. 9 orders them. Returns
    (anchors that have both, their n+ rows, their n rows); squared L2, ties to the lower index."""
    d = torch.cdist(f, f).pow(2).detach()
    other = y[:, None] != y[None, :]
    n_plus = torch.where(other, d, torch.full_like(d, float("inf"))).argmin(1)
    third = other & (y[None, :] != y[n_plus][:, None])
    n = torch.where(third, d, torch.full_like(d, float("inf"))).argmin(1)
    keep = (other.any(1) & third.any(1)).cpu().numpy()
    anchors = np.nonzero(keep)[0]
    return anchors, n_plus.cpu().numpy()[anchors], n.cpu().numpy()[anchors]


def not_class_loss(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """"Not this class" on the logits of generated hard negatives: mean of -log(1 - p_c), p the
    softmax and c the class each negative was made from (its reference image's class), computed as
    logsumexp over the other classes minus logsumexp over all (stable where p_c is near 1)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    others = logits.scatter(1, classes.view(-1, 1), float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(others, 1)).mean()


def uniform_loss(logits: torch.Tensor) -> torch.Tensor:
    """Outlier exposure (Hendrycks et al., ICLR 2019) on generated hard negatives: the
    cross-entropy of their softmax to the uniform distribution, mean over rows."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return -torch.log_softmax(logits, 1).mean()


def mined_metric_loss(f: torch.Tensor, y: torch.Tensor, m1: float, m2: float) -> torch.Tensor:
    """The metric term of Eq. 10 with mined negatives in place of generated ones: anchors with
    a mined (n+, n) (``mined_negatives``) take the quadruplet loss with their batch-hardest
    positive; the others the triplet (r, p, n) with margin m1; summed and averaged over the batch
    as ``parts_metric_loss``."""
    anchors, n_plus, n = mined_negatives(f, y)
    p_idx, n_idx = batch_hardest(f, y)
    total = f.sum() * 0.0
    if len(anchors):
        a, np_, nn_ = (torch.from_numpy(v).to(f.device) for v in (anchors, n_plus, n))
        total = total + quadruplet_loss(f[a], f[p_idx[a]], f[np_], f[nn_], m1, m2) * len(anchors)
    has = torch.zeros(len(y), dtype=torch.bool)
    has[torch.from_numpy(anchors)] = True
    return (total + _triplet_sum(f, p_idx, n_idx, ~has, m1)) / len(y)
