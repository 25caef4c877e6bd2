"""Stage 3 classifiers (paper 3.3).

* ``ImageClassifier``: the original-image and the object-image classifier: backbone -> global
  average pooling -> standardisation -> linear classifier, started from the linear probe (LP-FT).
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

from typing import Any

from ghns.models.backbones import Backbone, create_backbone
from ghns.models.registry import register_model

IMAGE_FORMAT = 2  # format 1 (a 128-d embedding from the localizer's weights) predates LP-FT
PARTS_FORMAT = 2  # format 1 (a 128-d projection from scratch) predates LP-FT


@torch.no_grad()
def load_probe_head(model: "ImageClassifier | PartsClassifier", probe) -> None:
    """Copy a ``ghns.probe.Probe`` into ``model``'s ``mean`` / ``std`` buffers and its linear
    ``classify`` layer (LP-FT: the untrained classifier is then that probe)."""
    model.mean.copy_(probe.mean)
    model.std.copy_(probe.std)
    model.classify.weight.copy_(probe.weight)
    model.classify.bias.copy_(probe.bias)


def weights_digest(blocks: nn.Module) -> str:
    """A digest of a module's weights and buffers (names and bytes)."""
    h = hashlib.sha1()
    for key, value in blocks.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ImageClassifier(nn.Module):
    """Backbone -> global average pooling -> standardisation -> linear classifier.

    LP-FT (Kumar et al., ICLR 2022): ``start_from(probe)`` loads the linear probe of the pooled
    features (flip-averaged, as ``benchmarks/linear_probe.py`` computes them) into the
    standardisation and the classifier, so the untrained classifier is that probe; fine-tuning the
    trainable blocks moves on from there. The triplet term's embedding is the standardised feature,
    L2-normalised."""

    mean: torch.Tensor  # buffers (typed for the checker)
    std: torch.Tensor

    def __init__(self, backbone: Backbone, num_classes: int, frozen_blocks: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.frozen_blocks = frozen_blocks
        self.register_buffer("mean", torch.zeros(backbone.out_channels))
        self.register_buffer("std", torch.ones(backbone.out_channels))
        self.classify = nn.Linear(backbone.out_channels, num_classes)
        for p in backbone.blocks[:frozen_blocks].parameters():
            p.requires_grad_(False)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.blocks[: self.frozen_blocks](self.backbone.normalize(images))

    def trunk_digest(self) -> str:
        """A digest of the frozen blocks' weights and buffers: classifiers with equal digests
        (and equal inputs) can share one pass through them."""
        return weights_digest(self.backbone.blocks[: self.frozen_blocks])

    def tail_digest(self) -> str:
        """The same of the blocks after the frozen ones: classifiers whose trunk and tail digests
        are both equal (a fine-tuning that kept its probe start) have equal pooled features."""
        return weights_digest(self.backbone.blocks[self.frozen_blocks:])

    def pooled(self, x: torch.Tensor, cached: bool = False) -> torch.Tensor:
        """Globally pooled features of images (or, with ``cached``, of trunk outputs)."""
        return self.backbone.blocks[self.frozen_blocks:](x if cached else self.trunk(x)).mean(dim=(2, 3))

    def head(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (pooled - self.mean) / self.std
        return F.normalize(z, dim=1), self.classify(z)

    def start_from(self, probe) -> None:
        """Load a ``ghns.probe.Probe`` of this classifier's pooled features."""
        load_probe_head(self, probe)

    def forward(self, x: torch.Tensor, cached: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.pooled(x, cached))

    def flip_averaged_pooled(self, x: torch.Tensor, x_flipped: torch.Tensor,
                             cached: bool = False) -> torch.Tensor:
        """The pooled features averaged over an input and its horizontal flip (images, or trunk
        outputs of the images and of the flipped images)."""
        return (self.pooled(x, cached) + self.pooled(x_flipped, cached)) / 2

    def flip_averaged_logits(self, x: torch.Tensor, x_flipped: torch.Tensor,
                             cached: bool = False) -> torch.Tensor:
        """Logits of ``flip_averaged_pooled``."""
        return self.head(self.flip_averaged_pooled(x, x_flipped, cached))[1]


class PartsClassifier(nn.Module):
    """Standardised set embedding -> residual projection (the embedding of Eq. 9) -> linear
    classifier (Eq. 10).

    LP-FT (Kumar et al., ICLR 2022): ``start_from(probe)`` loads the linear probe of the part
    embeddings into the standardisation and the classifier, and the projection's last layer starts
    at zero, so the untrained classifier *is* the probe; training (cross-entropy + the quadruplet
    loss with the generated hard negatives) moves the embedding from there."""

    mean: torch.Tensor  # buffers (typed for the checker)
    std: torch.Tensor

    def __init__(self, n_parts: int, part_dim: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        dim = n_parts * part_dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.project = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        last = self.project[2]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.classify = nn.Linear(dim, num_classes)

    def start_from(self, probe) -> None:
        """Load a ``ghns.probe.Probe`` of the concatenated part embeddings."""
        load_probe_head(self, probe)

    def forward(self, sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sets``: (B, P * D) concatenated part embeddings -> (unit embedding, logits)."""
        z = (sets - self.mean) / self.std
        f = z + self.project(z)
        return F.normalize(f, dim=1), self.classify(f)


@register_model("image_classifier", format=("image classifier", IMAGE_FORMAT))
def build_image_classifier(settings: dict[str, Any], pretrained: str | None = None) -> ImageClassifier:
    """The classifier that ``settings`` (what its checkpoint records: ``ModelSpec``'s fields and
    more) describe, with ``pretrained`` weights instead of its own if given."""
    return ImageClassifier(create_backbone(settings["backbone"], pretrained or settings["pretrained"]),
                           settings["num_classes"], settings["frozen_blocks"])


@register_model("parts_classifier", format=("parts classifier", PARTS_FORMAT))
def build_parts_classifier(settings: dict[str, Any], pretrained: str | None = None) -> PartsClassifier:
    return PartsClassifier(settings["n_parts"], settings["part_dim"], settings["num_classes"], settings["hidden"])
