"""Training FilterNet on the embedding table (full batch, in memory: it is a linear layer)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ghns.models.parts import FilterNet


def train_filternet(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                    num_classes: int, hidden: int = 0, epochs: int = 300, lr: float = 1e-2,
                    weight_decay: float = 1e-4, seed: int = 0) -> tuple[FilterNet, dict]:
    """FilterNet trained on unshuffled sets (B, P, D) with class labels, to the last epoch.

    Not stopped early on purpose: stage 2 keeps candidates FilterNet scores >= tau, which needs a
    FilterNet as confident on real sets as training makes it (the epoch with the best val
    accuracy comes early, when real sets score ~0.35 and nothing passes tau = 0.95). The best
    val accuracy seen is reported beside the final one."""
    torch.manual_seed(seed)
    n, parts, dim = train_x.shape
    net = FilterNet(parts, dim, num_classes, hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(train_x), torch.from_numpy(train_y).long()
    xv, yv = torch.from_numpy(val_x), torch.from_numpy(val_y).long()
    best = (-1.0, 0)
    for epoch in range(epochs):
        net.train()
        loss = F.cross_entropy(net(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if len(yv) and (epoch % 10 == 9 or epoch == epochs - 1):
            acc = accuracy(net, xv, yv)
            if acc > best[0]:
                best = (acc, epoch + 1)
    net.eval()
    with torch.no_grad():
        probs = net(xt).softmax(1)[torch.arange(len(yt)), yt]
    return net, {"val_accuracy": round(accuracy(net, xv, yv), 2), "epochs": epochs,
                 "best_val_accuracy_seen": round(best[0], 2), "best_epoch": best[1],
                 "train_accuracy": round(accuracy(net, xt, yt), 2),
                 "train_sets_scoring_095": round(float((probs >= 0.95).float().mean()), 4)}


@torch.no_grad()
def accuracy(net: FilterNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return 100.0 * (net(x).argmax(1) == y).float().mean().item() if len(y) else float("nan")
