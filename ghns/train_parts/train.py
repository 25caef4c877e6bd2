"""Stage 1 training loop (Ray Train): three part networks with
``alpha * L_cls + beta * L_triplet + gamma * L_adv`` (paper Eq. 7).

Batches are P classes x K images (``pk_batches``); the triplet loss mines inside each batch
(our own ``triplet_loss``: two modes, brute-force tested, no extra dependency). The adversarial
loss trains the linear discriminator on unshuffled and shuffled sets of the batch's part
embeddings (``shuffled_sets``). With a partly frozen backbone (``--trainable-blocks``) the
frozen blocks run once and their output is cached, so CPU epochs only run the trainable tail: for
pretrained frozen blocks, once per run (``ghns.train_parts.part_trunks``: the stage fills them, the loop
reads its shard, ``spec.trunks``); for random ones, in the worker.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ghns.data.catalog import Catalog
from ghns.data.tensors import augment, load_part_crops, to_float
from ghns.errors import StageError
from ghns.losses import adversarial_loss, shuffled_sets, triplet_loss
from ghns.models.backbones import cpu_layout
from ghns.models.parts import PartNetworks, build_parts
from ghns.sampling import pk_batches
from ghns.checkpoint import save_checkpoint
from ghns.train.epochs import Training, run_epochs
from ghns.train.runner import WorkerContext
from ghns.train.specs import PartNetworksSpec
from ghns.train.streams import Streams
from ghns.models import N_PARTS


def part_rows(catalog_path: str, localization_path: str, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Catalog rows of ``split`` with their part boxes (N, 3, 4) from localization.parquet."""
    catalog = Catalog.read(catalog_path)
    loc = pd.read_parquet(localization_path)
    rows = catalog.split(split)[["image_id", "path", "label", "split"]].merge(
        loc.drop(columns=["split", "label"]), on="image_id", how="left")
    cols = [[f"part{k + 1}_{c}" for c in "xywh"] for k in range(N_PARTS)]
    boxes = np.stack([rows[c].to_numpy(dtype=float) for c in cols], axis=1)
    return rows, boxes


@torch.no_grad()
def cache_trunks(model: PartNetworks, crops: torch.Tensor, device: torch.device,
                 batch: int = 64) -> torch.Tensor:
    """(N, P, 3, S, S) uint8 crops -> (N, P, ...) float16 output of each part's frozen trunk."""
    model.eval()
    outs = []
    for i in range(0, len(crops), batch):
        x = to_float(crops[i:i + batch]).to(device)
        outs.append(torch.stack([net.trunk(x[:, k]) for k, net in enumerate(model.networks())], 1).half().cpu())
    return torch.cat(outs)


def _load_crops(spec: PartNetworksSpec, ctx: WorkerContext, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's share of ``split``: (N, 3, 3, S, S) uint8 part crops and labels."""
    rows, boxes = part_rows(spec.catalog, spec.localization, split)
    share = ctx.shard(len(rows))
    rows, boxes = rows.iloc[share], boxes[share]
    crops, failed = load_part_crops(rows["path"].tolist(), boxes, spec.model.image_size)
    if failed:
        raise StageError(f"{len(failed)} catalogued images can no longer be read "
                         f"(first: {rows['path'].iloc[failed[0]]})")
    return crops, torch.tensor(rows["label"].to_numpy())


def _stored_trunks(spec: PartNetworksSpec, ctx: WorkerContext, model: PartNetworks,
                   split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's share of ``split`` from the run's part-crop trunk outputs."""
    from ghns.train_parts.part_trunks import read_part_trunks

    assert spec.trunks is not None
    rows = Catalog.read(spec.catalog).split(split)
    x = read_part_trunks(spec.trunks, split, rows["image_id"].to_numpy(), model)
    share = ctx.shard(len(rows))
    # float16, as the worker's own cache (``cache_trunks``) holds them: the same training either way
    return x[share].half(), torch.tensor(rows["label"].to_numpy())[share]


def train_parts_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of stage 1."""
    spec, ctx = PartNetworksSpec.of(config), WorkerContext(config)
    torch.manual_seed(spec.seed + ctx.rank)
    model = build_parts(spec.settings())
    cpu_layout(model, ctx.device)  # the inputs stay (N, P, ...): each part's convolutions convert
    cached = spec.model.frozen_blocks > 0
    start_time = time.perf_counter()
    if spec.trunks:  # the frozen blocks ran once for the run (ghns.train_parts.part_trunks)
        (train_x, train_y), (val_x, val_y) = (_stored_trunks(spec, ctx, model, s) for s in ("train", "val"))
    else:
        (train_x, train_y), (val_x, val_y) = _load_crops(spec, ctx, "train"), _load_crops(spec, ctx, "val")
    if cached:
        model.to(ctx.device)
    if cached and not spec.trunks:
        train_x, val_x = cache_trunks(model, train_x, ctx.device), cache_trunks(model, val_x, ctx.device)
    cache_seconds = time.perf_counter() - start_time
    net = ctx.wrap(model)
    opt, sched = spec.optim.build([p for p in model.parameters() if p.requires_grad])
    t = Training(model, opt, sched, Streams(spec.seed * 1000 + ctx.rank))

    def inputs(x: torch.Tensor, train: bool) -> torch.Tensor:
        b, p = x.shape[:2]
        x = x.float() if cached else to_float(x)
        if train:  # the same flip for the three parts of one image would be wrong: flip each
            x = augment(x.flatten(0, 1), t.streams.torch, max_shift=0.0 if cached else 0.1).view(b, p, *x.shape[2:])
        return x.to(ctx.device, non_blocking=True)

    run_epochs(ctx, t, spec.optim.epochs,
               lambda: _parts_epoch(spec, ctx, net, model, opt, train_x, train_y, inputs, t.streams.torch),
               lambda: (_val_accuracy(model, val_x, val_y, inputs, cached, ctx), None),
               old_seed=lambda start: spec.seed * 1000 + ctx.rank + 17 * start,
               extra={"cache_seconds": cache_seconds, "workers": ctx.world})
    if ctx.is_main:
        save_checkpoint(spec.output, model, spec.settings())


def _parts_epoch(spec: PartNetworksSpec, ctx: WorkerContext, net, model: PartNetworks, opt,
                 train_x: torch.Tensor, train_y: torch.Tensor, inputs, gen: torch.Generator) -> dict[str, float]:
    """One epoch of Eq. 7 on P-K batches; the mean losses and discriminator accuracy over workers."""
    cached = spec.model.frozen_blocks > 0
    autocast = ctx.autocast(cached)
    net.train()
    if cached:
        for part in model.networks():
            part.backbone.blocks[: part.frozen_blocks].eval()
    sums = torch.zeros(6)
    batches = list(pk_batches(train_y, spec.batch_classes, spec.batch_images, gen))
    for idx in batches[:ctx.common_steps(len(batches))]:
        y = train_y[idx].to(ctx.device)
        sets, shuffled = shuffled_sets(len(idx), gen)
        with autocast:  # the discriminator runs inside forward, so DDP syncs its gradients too
            emb, logits, disc = net(inputs(train_x[idx], True), cached=cached, sets=sets.to(ctx.device))
            l_cls = sum(F.cross_entropy(logits[:, k].float(), y) for k in range(N_PARTS))
            l_tri = sum(triplet_loss(emb[:, k].float(), y, spec.triplet_margin, spec.triplet_mining)
                        for k in range(N_PARTS))
            l_adv = adversarial_loss(disc.float(), shuffled.to(ctx.device))
            loss = spec.alpha * l_cls + spec.beta * l_tri + spec.gamma * l_adv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        disc_acc = ((disc.detach() > 0).float() == shuffled.to(ctx.device)).float().mean().item()
        sums += torch.tensor([float(torch.as_tensor(v).detach()) for v in (loss, l_cls, l_tri, l_adv)] + [disc_acc, 1.0])
    sums = ctx.all_reduce(sums)
    return dict(zip(("loss", "cls", "triplet", "adv", "adv_accuracy"), (sums[:5] / sums[5].clamp_min(1)).tolist()))


@torch.no_grad()
def _val_accuracy(model, val_x, val_y, inputs, cached, ctx) -> dict[str, float]:
    model.eval()
    correct = torch.zeros(N_PARTS + 2)
    for i in range(0, len(val_y), 128):
        _, logits, _ = model(inputs(val_x[i:i + 128], False), cached=cached)
        y = val_y[i:i + 128].to(ctx.device)
        hits = [(logits[:, k].argmax(1) == y).sum().item() for k in range(N_PARTS)]
        hits.append((logits.float().softmax(2).sum(1).argmax(1) == y).sum().item())
        correct += torch.tensor(hits + [len(y)], dtype=torch.float32)
    correct = ctx.all_reduce(correct)
    n = correct[-1].clamp_min(1)
    out = {f"val_acc_part{k + 1}": (100 * correct[k] / n).item() for k in range(N_PARTS)}
    out["val_acc_parts_vote"] = (100 * correct[N_PARTS] / n).item()
    return out
