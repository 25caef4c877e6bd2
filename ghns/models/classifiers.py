"""Stage 3 classifiers (paper 3.3).

* ``ImageClassifier``: the original-image and the object-image classifier: backbone -> global
  average pooling -> embedding (unit length, for the triplet loss) -> linear classifier.
* ``PartsClassifier``: the parts image classifier. It reads the three stage-1 part embeddings of a
  set (frozen part extractors), so a generated hard negative n+, stored as its three part
  embeddings, lives in exactly the same input space as the real sets r, p and n: no CNN is re-run
  for n+ and nothing drifts. A projection to a new embedding (for the quadruplet loss, Eq. 9) and a
  linear classifier (Eq. 10) are trained on top.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.nn import functional as F

from ghns.models.backbones import Backbone


class ImageClassifier(nn.Module):
    def __init__(self, backbone: Backbone, embedding_dim: int, num_classes: int,
                 frozen_blocks: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.frozen_blocks = frozen_blocks
        self.embed = nn.Linear(backbone.out_channels, embedding_dim)
        self.classify = nn.Linear(embedding_dim, num_classes)
        for p in backbone.blocks[:frozen_blocks].parameters():
            p.requires_grad_(False)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.blocks[: self.frozen_blocks](self.backbone.normalize(images))

    def trunk_digest(self) -> str:
        """A digest of the frozen blocks' weights and buffers: classifiers with equal digests
        (and equal inputs) can share one pass through them."""
        h = hashlib.sha1()
        for key, value in self.backbone.blocks[: self.frozen_blocks].state_dict().items():
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def forward(self, x: torch.Tensor, cached: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone.blocks[self.frozen_blocks:](x if cached else self.trunk(x))
        f = self.embed(feats.mean(dim=(2, 3)))
        return F.normalize(f, dim=1), self.classify(f)


class PartsClassifier(nn.Module):
    def __init__(self, n_parts: int, part_dim: int, embedding_dim: int, num_classes: int,
                 hidden: int = 512) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(n_parts * part_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, embedding_dim))
        self.classify = nn.Linear(embedding_dim, num_classes)

    def forward(self, sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sets``: (B, P * D) concatenated part embeddings -> (unit embedding, logits)."""
        f = self.project(sets)
        return F.normalize(f, dim=1), self.classify(f)
