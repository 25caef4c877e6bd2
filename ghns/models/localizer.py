"""The weakly supervised localizer: one backbone, a CAM head and a part head.

* CAM head (Zhou et al. 2016, the paper's ref. [38]): global average pooling and a linear
  classifier; the class activation map of class c is ``W_c . F(x)``.
* Part head (in the spirit of MA-CNN's channel grouping, ref. [5], and of region grouping,
  Huang & Li, CVPR 2020): ``n_parts`` part prototypes and one background prototype in feature
  space. Every location is softly assigned to its nearest prototype (softmax of negative squared
  distance between L2-normalised features and prototypes), each part's features are pooled under
  its assignment, and a linear classifier reads the concatenated part features. The prototypes are
  shared by all images, so part k is the same kind of region everywhere; the regularisers in
  ``ghns.losses`` (presence, compactness) keep every part present and compact.

Only class labels train it. At inference the part assignment maps give the three part centres,
and their complement (one minus the background assignment) is a foreground map for object boxes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from typing import Any

from ghns.models.backbones import Backbone, create_backbone
from ghns.models.registry import register_model


class PartLocalizer(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, n_parts: int = 3,
                 frozen_blocks: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.frozen_blocks = frozen_blocks  # the first blocks run once, outside training steps
        channels = backbone.out_channels
        self.n_parts = n_parts
        self.cam_head = nn.Linear(channels, num_classes)
        self.prototypes = nn.Parameter(torch.randn(n_parts + 1, channels) * 0.1)  # last: background
        self.log_scale = nn.Parameter(torch.tensor(1.6))  # assignment sharpness, exp(1.6) ~ 5
        self.part_head = nn.Linear(n_parts * channels, num_classes)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen first blocks (their output is what gets cached)."""
        x = self.backbone.normalize(images)
        return self.backbone.blocks[: self.frozen_blocks](x)

    def forward(self, x: torch.Tensor, cached: bool = False) -> dict[str, torch.Tensor]:
        """``x``: images in [0, 1], or with ``cached=True`` the output of ``trunk``."""
        trunk_out = x if cached else self.trunk(x)
        return self.from_features(self.backbone.blocks[self.frozen_blocks:](trunk_out))

    def from_features(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of both heads, the part assignment maps and the CAM inputs."""
        unit = F.normalize(feats, dim=1)
        protos = F.normalize(self.prototypes, dim=1)
        # ||u - p||^2 = 2 - 2 u.p for unit vectors
        dist = 2.0 - 2.0 * torch.einsum("nchw,kc->nkhw", unit, protos)
        assign = torch.softmax(-dist * self.log_scale.exp(), dim=1)  # (N, K+1, h, w)
        parts = assign[:, : self.n_parts]
        mass = parts.sum(dim=(2, 3)).clamp_min(1e-6)
        pooled = torch.einsum("nkhw,nchw->nkc", parts, feats) / mass[..., None]
        return {"cam_logits": self.cam_head(feats.mean(dim=(2, 3))),
                "part_logits": self.part_head(pooled.flatten(1)),
                "assign": assign, "features": feats}

    def cam(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``W_c . F`` of one class per image: (N, h, w)."""
        weights = self.cam_head.weight[classes]  # (N, C)
        return torch.einsum("nchw,nc->nhw", feats, weights)


@register_model("localizer")
def build_localizer(settings: dict[str, Any], pretrained: str | None = None) -> PartLocalizer:
    """The localizer that ``settings`` (what its checkpoint records: ``ModelSpec``'s fields)
    describe, with ``pretrained`` weights instead of its own if given."""
    frozen = settings["frozen_blocks"]
    backbone = create_backbone(settings["backbone"], pretrained or settings["pretrained"])
    model = PartLocalizer(backbone, settings["num_classes"], n_parts=3, frozen_blocks=frozen)
    for p in model.backbone.blocks[:frozen].parameters():
        p.requires_grad_(False)
    return model
