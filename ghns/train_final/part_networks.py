"""Stage 3 as the paper trains it: the parts classifier *with its part networks* (Sec. 4.1: "we
trained backbone x3 and x5 networks in stage 1 and stage 3").

``ghns.train_final.parts`` trains a head on frozen stage-1 part embeddings; there a generated set
(a1, a2, b3) adds no constraint on the features, which cannot move. Here the three part networks
(the blocks after any frozen trunk, and their embedding heads) train too, under the same loss
(``ghns.train_final.parts.parts_loss``: Eq. 10, and the negatives' logit term where set), started
from stage 1's weights and the probe of their embeddings (LP-FT), so before the first step the
model is exactly the frozen classifier.

Inputs are each image's three part crops (``PartInputs``: the crops, or with a frozen trunk the
part-crop trunk outputs that stage 1 stored). Where n+ comes from (``SOURCES``):

* ``stored``: the bank's set embeddings, fixed stage-1 features (the paper);
* ``online``: the set recomposed every step from the *current* networks' embeddings of the bank's
  provenance crops (``recompose``: part k of image ``part{k}_image``), so n+ lives in the same
  feature space as r, p and n; with networks that have not moved it equals ``stored``;
* ``mined``: no bank; n+ and n mined among the batch's real images (``ghns.losses``);
* ``none``: the triplet (r, p, n), the control arm.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from ghns.data.tensors import to_float
from ghns.models.classifiers import PartsClassifier
from ghns.sampling import pk_batches
from ghns.train.epochs import LOCAL, Evaluation, Host, KeepBest, Training, run_epochs
from ghns.train.specs import PartsSettings
from ghns.train.streams import Streams
from ghns.train_final.parts import NegativeBank, build_parts_classifier, draw_negatives, parts_loss

if TYPE_CHECKING:
    from ghns.models.parts import PartNetworks
    from ghns.train_final.parts import PartsData

SOURCES = ("none", "stored", "online", "mined")


@dataclass
class PartInputs:
    """Each image's part crops (uint8, (N, P, 3, s, s)) or, ``cached``, its part-crop trunk
    outputs (float, (N, P, C, h, w)), for the train and val splits, with labels and image ids."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    train_ids: np.ndarray
    val_x: torch.Tensor
    val_y: torch.Tensor
    cached: bool

    def rows_of(self, image_ids: np.ndarray) -> np.ndarray:
        """Train rows of ``image_ids`` (any shape); a ValueError names an id not in train."""
        index = {int(i): r for r, i in enumerate(self.train_ids)}
        flat = np.asarray(image_ids).reshape(-1)
        missing = [int(i) for i in flat if int(i) not in index]
        if missing:
            raise ValueError(f"{len(missing)} provenance image(s) are not train images of this run "
                             f"(first: {missing[0]}); the bank was made from another catalog")
        return np.array([index[int(i)] for i in flat], np.int64).reshape(np.shape(image_ids))


class PartsWithNetworks(nn.Module):
    """Part networks (trunk outputs or crops in) -> concatenated unit part embeddings (Eq. 1's
    f of each part) -> ``PartsClassifier``. The discriminator of stage 1 is not part of it."""

    def __init__(self, networks: "PartNetworks", head: PartsClassifier, cached: bool) -> None:
        super().__init__()
        self.networks = nn.ModuleList(copy.deepcopy(net) for net in networks.networks())
        self.head = head
        self.cached = cached

    def part_embedding(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """(B, D) unit embeddings of part ``k`` of crops (uint8) or trunk outputs ``x`` (B, ...)."""
        x = x.float() if self.cached else to_float(x)
        return self.networks[k](x, cached=self.cached)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, ...) -> (B, P * D) concatenated part embeddings."""
        return torch.cat([self.part_embedding(k, x[:, k]) for k in range(len(self.networks))], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.embed(x))

    def freeze_batch_norm(self) -> None:
        """Keep stage 1's batch-norm statistics: P-K batches are too few and too skewed to
        re-estimate them, and with them fixed the start is exactly the frozen classifier."""
        for module in self.networks.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def recompose(model: PartsWithNetworks, train_x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """(M, P * D): generated sets rebuilt from the current networks, part k of set i being part k
    of train row ``rows[i, k]`` (the bank's provenance). With networks unchanged since the bank
    was made this is the bank's stored embedding (to float tolerance)."""
    if not len(rows):
        return torch.zeros(0, model.head.mean.numel())
    return torch.cat([model.part_embedding(k, train_x[torch.from_numpy(rows[:, k]), k])
                      for k in range(rows.shape[1])], 1)


def bank_rows(bank: NegativeBank, inputs: PartInputs) -> np.ndarray:
    """The train rows of every bank set's parts (M, P), from its provenance image ids."""
    if bank.sources is None:
        raise ValueError("this bank was read without its provenance (NegativeBank.read)")
    return inputs.rows_of(bank.sources)


def start_model(networks: "PartNetworks", data: "PartsData", settings: PartsSettings, num_classes: int,
                cached: bool, probe) -> PartsWithNetworks:
    """Stage 1's networks and the probe of their embeddings: the frozen classifier, to train."""
    head = build_parts_classifier(data, settings, num_classes)
    head.start_from(probe)
    return PartsWithNetworks(networks, head, cached)


def fit_with_networks(inputs: PartInputs, model: PartsWithNetworks, bank: NegativeBank,
                      settings: PartsSettings, seed: int, source: str, networks_lr: float,
                      host: Host = LOCAL) -> tuple[PartsWithNetworks, KeepBest]:
    """Train ``model`` (``start_model``) with n+ from ``source`` (``SOURCES``); returns it with
    its best-val-epoch weights, and the ``KeepBest``. The part networks learn at ``networks_lr``,
    the head at ``settings.parts_lr``; everything else as ``fit_parts_classifier``."""
    if source not in SOURCES:
        raise ValueError(f"unknown negative source {source!r}; expected one of {SOURCES}")
    torch.manual_seed(seed)
    if source not in ("stored", "online"):
        bank = NegativeBank.empty(model.head.mean.numel())
    rows = bank_rows(bank, inputs) if source == "online" else None
    groups = [{"params": [p for p in model.head.parameters() if p.requires_grad]},
              {"params": [p for p in model.networks.parameters() if p.requires_grad], "lr": networks_lr}]
    opt, sched = settings.optim().build(groups)
    best = KeepBest(settings.replace_start_p, settings.patience, settings.parts_keep)
    t = Training(model, opt, sched, Streams(seed * 1000), best)

    def evaluate() -> Evaluation:
        correct = predict(model, inputs.val_x).argmax(1) == inputs.val_y
        return {"val_acc": (100.0 * correct.float().mean()).item() if len(correct) else float("nan")}, correct

    run_epochs(host, t, settings.parts_epochs,
               lambda: _epoch(inputs, model, bank, rows, settings, opt, t.streams, source == "mined"),
               evaluate, extra={"bank_size": len(bank), "negatives": source})
    return model.eval(), best


def _epoch(inputs: PartInputs, model: PartsWithNetworks, bank: NegativeBank, rows: np.ndarray | None,
           settings: PartsSettings, opt, streams: Streams, mined: bool) -> dict[str, float]:
    """One epoch on P-K batches: r, p, n through the networks; n+ from the bank (``rows``: its
    provenance, recomposed through the current networks) or mined; ``parts_loss``."""
    model.train()
    model.freeze_batch_norm()
    sums = torch.zeros(4)
    for idx in pk_batches(inputs.train_y, settings.batch_classes, settings.batch_images, streams.torch):
        y = inputs.train_y[idx]
        pos, drawn = draw_negatives(bank, idx.numpy(), inputs.train_ids, inputs.train_y, streams.numpy,
                                    settings.negatives_per_anchor)
        sets = model.embed(inputs.train_x[idx])
        if len(drawn):
            negatives = recompose(model, inputs.train_x, rows[drawn]) if rows is not None else bank.x[drawn]
            sets = torch.cat([sets, negatives])
        f, logits = model.head(sets)
        loss, l_cls, l_metric = parts_loss(f, logits, y, pos, settings, mined)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums += torch.tensor([loss.item(), l_cls.item(), float(l_metric.detach()), 1.0])
    return dict(zip(("loss", "cls", "quad"), (sums[:3] / sums[3].clamp_min(1)).tolist()))


@torch.no_grad()
def predict(model: PartsWithNetworks, x: torch.Tensor, batch: int = 256,
            out: Callable[[torch.Tensor], torch.Tensor] = lambda logits: logits) -> torch.Tensor:
    """Logits (or ``out`` of them) of every row of ``x`` (N, P, ...), in batches, in eval mode."""
    model.eval()
    if not len(x):
        return torch.zeros(0, model.head.classify.out_features)
    return torch.cat([out(model(x[i:i + batch])[1]) for i in range(0, len(x), batch)])


# -- reading a run's part crops ---------------------------------------------------------------

def stage1_networks(run) -> tuple["PartNetworks", dict]:
    """The run's stage-1 part networks and their settings (``<run>/train-parts/parts.pt``)."""
    from ghns.checkpoint import load_model

    return load_model(run.part_networks, "part_networks")


def split_part_inputs(run, catalog, networks: "PartNetworks", settings: dict, split: str
                      ) -> tuple[torch.Tensor, bool]:
    """``split``'s part inputs in catalog order, and whether they are trunk outputs: the run's
    stored part-crop trunk outputs where stage 1 stores them (``ghns.train_parts.part_trunks``),
    else the crops of the run's part boxes (uint8)."""
    from ghns.data.tensors import load_part_crops
    from ghns.train_parts.part_trunks import (BOX_COLUMNS, ensure_part_trunks, part_box_rows,
                                              read_part_trunks, stores_part_trunks)

    rows = part_box_rows(run, catalog)
    rows = rows[rows["split"] == split].reset_index(drop=True)
    if stores_part_trunks(networks, settings["backbone"], settings["pretrained"]):
        from ghns.config import Config

        cfg = Config.from_yaml(run.config, saved_run=True)
        folder = ensure_part_trunks(cfg, run, catalog, networks, settings)
        return read_part_trunks(folder, split, rows["image_id"].to_numpy(), networks), True
    boxes = rows[BOX_COLUMNS].to_numpy(dtype=float).reshape(len(rows), -1, 4)
    crops, failed = load_part_crops(rows["path"].tolist(), boxes, int(settings["image_size"]))
    if failed:
        raise ValueError(f"{len(failed)} {split} image(s) of the run cannot be read now "
                         f"(first: {rows['path'].iloc[failed[0]]})")
    return crops, False


def read_part_inputs(run, catalog, networks: "PartNetworks", settings: dict) -> PartInputs:
    """The train and val part inputs of a run (``split_part_inputs``)."""
    train_x, cached = split_part_inputs(run, catalog, networks, settings, "train")
    val_x, _ = split_part_inputs(run, catalog, networks, settings, "val")
    train, val = catalog.split("train"), catalog.split("val")
    return PartInputs(train_x, torch.tensor(train["label"].to_numpy()), train["image_id"].to_numpy(),
                      val_x, torch.tensor(val["label"].to_numpy()), cached)


@torch.no_grad()
def crop_inputs(networks: "PartNetworks", crops: torch.Tensor, cached: bool, batch: int = 64) -> torch.Tensor:
    """Part crops (uint8, (N, P, 3, s, s)) as ``PartsWithNetworks`` reads them: unchanged, or
    with ``cached`` each part through its network's frozen trunk (float32, as stage 1 stores it)."""
    if not cached:
        return crops
    nets = networks.networks()
    for net in nets:
        net.eval()
    out = [torch.stack([net.trunk(to_float(crops[i:i + batch, k])) for k, net in enumerate(nets)], 1).float()
           for i in range(0, len(crops), batch)]
    return torch.cat(out) if out else torch.zeros(0)
