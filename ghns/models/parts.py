"""Stage 1 networks (paper 3.1) and FilterNet (paper 3.2).

* ``PartNetwork``: backbone -> global average pooling -> embedding head (``D`` dims, the paper's
  f(.)) -> classifier. Embeddings are L2-normalised before the triplet loss, the discriminator
  and the embedding table, so squared distances lie in [0, 4] and margins mean the same thing for
  every backbone.
* ``PartNetworks``: one part network per part, plus the discriminator D of the adversarial loss
  (Eq. 5-6) on the three concatenated part embeddings (shuffled or not). The paper's D is linear,
  but a linear D sums one term per part, and a shuffled set's parts are each a real part of some
  image: every part has the same distribution in shuffled and unshuffled sets, so a linear D cannot
  beat chance (its loss stays at ln 2 and gives the part networks no signal; measured). Telling
  the two apart needs interactions between parts, so D has a hidden layer by default
  (``discriminator_hidden=0`` restores the paper's linear D).
* ``FilterNet``: the FC layers on top of the frozen part extractors, trained on unshuffled sets
  with class labels. Linear by default, so its logits decompose per part:
  ``W1 f1 + W2 f2 + W3 f3 + b`` (what makes stage-2 scoring cheap); ``hidden > 0`` adds a layer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from typing import Any

from ghns.models.backbones import Backbone, create_backbone
from ghns.models.registry import register_model


class PartNetwork(nn.Module):
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

    def forward(self, x: torch.Tensor, cached: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit-length embedding, class logits); ``x`` is images or, with ``cached``, the trunk's
        output."""
        feats = self.backbone.blocks[self.frozen_blocks:](x if cached else self.trunk(x))
        f = self.embed(feats.mean(dim=(2, 3)))
        return F.normalize(f, dim=1), self.classify(f)


class PartNetworks(nn.Module):
    """The three part networks and the shuffle discriminator, trained together."""

    def __init__(self, backbone: str, pretrained: str, embedding_dim: int, num_classes: int,
                 frozen_blocks: int = 0, n_parts: int = 3, discriminator_hidden: int = 256) -> None:
        super().__init__()
        self.parts = nn.ModuleList(
            PartNetwork(create_backbone(backbone, pretrained), embedding_dim, num_classes, frozen_blocks)
            for _ in range(n_parts))
        inp = n_parts * embedding_dim
        self.discriminator = (nn.Linear(inp, 1) if discriminator_hidden == 0 else
                              nn.Sequential(nn.Linear(inp, discriminator_hidden), nn.ReLU(),
                                            nn.Linear(discriminator_hidden, 1)))

    def networks(self) -> list[PartNetwork]:
        """The part networks, typed (``self.parts`` is a ``ModuleList``)."""
        return [net for net in self.parts if isinstance(net, PartNetwork)]

    def forward(self, crops: torch.Tensor, cached: bool = False, sets: torch.Tensor | None = None):
        """``crops``: (B, P, ...) per-part inputs -> embeddings (B, P, D), logits (B, P, C) and,
        when ``sets`` (M, P) index rows of the batch per part, the discriminator's shuffled-or-not
        logits (M,) of those sets (else None)."""
        outs = [net(crops[:, k], cached=cached) for k, net in enumerate(self.parts)]
        emb = torch.stack([o[0] for o in outs], 1)
        logits = torch.stack([o[1] for o in outs], 1)
        disc = None
        if sets is not None:
            picked = torch.stack([emb[sets[:, k], k] for k in range(len(self.parts))], 1)
            disc = self.discriminator(picked.flatten(1)).squeeze(1)
        return emb, logits, disc


class FilterNet(nn.Module):
    """Class logits of a set of part embeddings (B, P, D)."""

    def __init__(self, n_parts: int, embedding_dim: int, num_classes: int, hidden: int = 0) -> None:
        super().__init__()
        self.n_parts, self.embedding_dim, self.hidden = n_parts, embedding_dim, hidden
        inp = n_parts * embedding_dim
        self.net = (nn.Linear(inp, num_classes) if hidden == 0 else
                    nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)))

    @property
    def is_linear(self) -> bool:
        return self.hidden == 0

    def forward(self, sets: torch.Tensor) -> torch.Tensor:
        return self.net(sets.flatten(1))

    def part_tables(self, embeddings: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """For a linear FilterNet: per part k, the logit contribution ``W_k e`` of every row of
        ``embeddings[k]`` (N_k, C), and the bias (C,). A set's logits are then the sum of one row
        from each table plus the bias, exactly ``forward`` of the concatenated set."""
        if not self.is_linear:
            raise ValueError("per-part logit tables need a linear FilterNet (hidden=0)")
        linear = self.net
        assert isinstance(linear, nn.Linear)
        weight = linear.weight.view(-1, self.n_parts, self.embedding_dim)  # (C, P, D)
        return [e @ weight[:, k].T for k, e in enumerate(embeddings)], linear.bias


@register_model("part_networks")
def build_parts(settings: dict[str, Any], pretrained: str | None = None) -> PartNetworks:
    """The part networks that ``settings`` (what their checkpoint records:
    ``PartNetworksSpec.settings``) describe, with ``pretrained`` weights instead if given."""
    hidden = settings.get("discriminator_hidden", 256)  # checkpoints before it was a setting
    return PartNetworks(settings["backbone"], pretrained or settings["pretrained"], settings["embedding_dim"],
                        settings["num_classes"], settings["frozen_blocks"], 3, hidden)


@register_model("filternet")
def build_filternet(settings: dict[str, Any], pretrained: str | None = None) -> FilterNet:
    return FilterNet(settings["n_parts"], settings["embedding_dim"], settings["num_classes"], settings["hidden"])
