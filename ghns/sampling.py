"""Batch sampling for metric learning: P classes x K images per batch (pure, seeded)."""

from __future__ import annotations

import torch


def pk_batches(labels: torch.Tensor, classes_per_batch: int, images_per_class: int,
               generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """One epoch of batches, each ``classes_per_batch`` classes x ``images_per_class`` images.

    Classes are visited in a random order; each class contributes ``images_per_class`` of its
    images (drawn without replacement when it has that many, else with replacement), and an
    epoch has about ``len(labels) / (P * K)`` batches, so every image is seen about once.
    Batches hold indices into ``labels``; a batch may have fewer classes when too few exist.
    """
    labels = torch.as_tensor(labels)
    classes = torch.unique(labels)
    if len(labels) == 0:
        return []
    per_batch = classes_per_batch * images_per_class
    n_batches = max(1, round(len(labels) / per_batch))
    by_class = {int(c): torch.nonzero(labels == c).flatten() for c in classes}
    batches = []
    order = classes[torch.randperm(len(classes), generator=generator)]
    cursor = 0
    for _ in range(n_batches):
        if cursor + classes_per_batch > len(order):
            order = classes[torch.randperm(len(classes), generator=generator)]
            cursor = 0
        chosen = order[cursor: cursor + classes_per_batch]
        cursor += classes_per_batch
        idx = []
        for c in chosen.tolist():
            pool = by_class[c]
            if len(pool) >= images_per_class:
                pick = pool[torch.randperm(len(pool), generator=generator)[:images_per_class]]
            else:
                pick = pool[torch.randint(len(pool), (images_per_class,), generator=generator)]
            idx.append(pick)
        batches.append(torch.cat(idx))
    return batches
