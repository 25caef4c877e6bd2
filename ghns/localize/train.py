"""Training the localizer (``PartLocalizer``) from class labels alone: a Ray Train loop.

Loss: cross-entropy of the CAM head + cross-entropy of the part head
+ ``part_compactness`` * compactness + ``part_presence`` * presence + ``part_separation`` *
separation + ``part_area`` * area (see ``ghns.losses``). When the first backbone
blocks are frozen (a pretrained backbone), their output is computed once and cached, and
augmentation (horizontal flips) is applied to the cached maps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

from ghns.data.catalog import Catalog
from ghns.data.tensors import augment, load_images, to_float
from ghns.losses import part_area, part_compactness, part_presence, part_separation
from ghns.models.backbones import cpu_layout
from ghns.models.localizer import PartLocalizer, build_localizer
from ghns.checkpoint import save_checkpoint
from ghns.train.epochs import Training, run_epochs
from ghns.train.runner import WorkerContext
from ghns.train.specs import LocalizerSpec
from ghns.train.streams import Streams



@torch.no_grad()
def _trunk_outputs(model: PartLocalizer, images: torch.Tensor, device: torch.device,
                   batch: int = 64) -> torch.Tensor:
    model.eval()
    layout = cpu_layout(model, device)
    outs = [model.trunk(to_float(images[i:i + batch]).to(device).contiguous(memory_format=layout)).half().cpu()
            for i in range(0, len(images), batch)]
    return torch.cat(outs) if outs else torch.empty(0)


def _from_stored(spec: LocalizerSpec, ctx: WorkerContext, model: PartLocalizer, catalog: Catalog,
                 split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's share of ``rows``' trunk outputs (float16), from the run's outputs of the
    first ``spec.trunk_blocks`` blocks, which must hold our own weights."""
    from ghns.models.classifiers import weights_digest
    from ghns.trunks import read_trunks

    rows = catalog.split(split)
    first = model.backbone.blocks[: spec.trunk_blocks]
    assert spec.trunks is not None
    data = read_trunks(spec.trunks, split, rows["image_id"].to_numpy(), weights_digest(first))
    share = ctx.shard(len(rows))
    return (frozen_rest(model, data["x"][share], spec.trunk_blocks, ctx.device),
            torch.tensor(rows["label"].to_numpy())[share])


@torch.no_grad()
def frozen_rest(model: PartLocalizer, x: torch.Tensor, start: int, device: torch.device,
                batch: int = 64) -> torch.Tensor:
    """Outputs of blocks ``start`` to ``frozen_blocks`` (float16) for outputs of the first
    ``start`` (float16): the trunk the localizer caches, from a shared shallower one."""
    model.eval()
    layout = cpu_layout(model, device)
    rest = model.backbone.blocks[start: model.frozen_blocks]
    outs = [rest(x[i:i + batch].to(device).float().contiguous(memory_format=layout)).half().cpu()
            for i in range(0, len(x), batch)]
    return torch.cat(outs) if outs else x


def localizer_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: trains on this worker's shard of the train split."""
    spec, ctx = LocalizerSpec.of(config), WorkerContext(config)
    torch.manual_seed(spec.seed + ctx.rank)
    catalog = Catalog.read(spec.catalog)
    size = spec.model.image_size

    def load(split: str):
        rows = catalog.split(split)
        rows = rows.iloc[ctx.shard(len(rows))]
        return load_images(rows, size), torch.tensor(rows["label"].to_numpy())

    model = build_localizer(spec.model.to_dict())
    layout = cpu_layout(model, ctx.device)
    cached = model.frozen_blocks > 0
    if spec.trunks:  # the run's frozen-trunk outputs (ghns.trunks) through the rest of our frozen blocks
        model.to(ctx.device)
        (train_x, train_y), (val_x, val_y) = (_from_stored(spec, ctx, model, catalog, s)
                                              for s in ("train", "val"))
    else:
        (train_x, train_y), (val_x, val_y) = load("train"), load("val")
    if cached and not spec.trunks:  # run the frozen trunk once; training sees only its (cached) output
        model.to(ctx.device)
        train_x = _trunk_outputs(model, train_x, ctx.device)
        val_x = _trunk_outputs(model, val_x, ctx.device)
    net = ctx.wrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.optim.lr, weight_decay=spec.optim.weight_decay)
    batch, epochs = spec.batch_size, spec.optim.epochs
    steps = epochs * max(1, math.ceil(len(train_y) / batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.optim.lr, total_steps=steps)
    t = Training(model, opt, sched, Streams(spec.seed * 1000 + ctx.rank), schedule_per_epoch=False)

    def inputs(x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float() if cached else to_float(x)
        if train:
            x = augment(x, t.streams.torch, max_shift=0.0 if cached else 0.1)
        return x.to(ctx.device).contiguous(memory_format=layout)

    run_epochs(ctx, t, epochs,
               lambda: _localizer_epoch(spec, ctx, net, model, opt, sched, train_x, train_y, inputs,
                                        t.streams.torch),
               lambda: (_val_accuracy(net, model, val_x, val_y, inputs, cached, ctx), None))
    if ctx.is_main:
        save_checkpoint(spec.output, model, spec.model.to_dict())


def _localizer_epoch(spec: LocalizerSpec, ctx: WorkerContext, net, model: PartLocalizer, opt, sched,
                     train_x: torch.Tensor, train_y: torch.Tensor, inputs, gen: torch.Generator) -> dict[str, float]:
    """One epoch over shuffled batches (the one-cycle schedule steps per batch); the mean losses
    over workers."""
    cached = model.frozen_blocks > 0
    net.train()
    if cached:
        model.backbone.blocks[: model.frozen_blocks].eval()
    totals = torch.zeros(7)
    order = torch.randperm(len(train_y), generator=gen)
    batch = spec.batch_size
    batches = [b for b in (order[i:i + batch] for i in range(0, len(order), batch)) if len(b) >= 2]
    for idx in batches[:ctx.common_steps(len(batches))]:
        with ctx.autocast(cached):  # bf16 where the hardware has it (not on cached trunks); losses float32
            out = net(inputs(train_x[idx], True), cached=cached)
        y = train_y[idx].to(ctx.device)
        parts = out["assign"][:, :-1].float()
        l_cam = F.cross_entropy(out["cam_logits"].float(), y)
        l_part = F.cross_entropy(out["part_logits"].float(), y)
        l_comp, l_pres = part_compactness(parts), part_presence(parts)
        l_sep = part_separation(parts)
        l_area = part_area(parts, spec.part_min_area)
        loss = (l_cam + l_part + spec.part_compactness * l_comp + spec.part_presence * l_pres
                + spec.part_separation * l_sep + spec.part_area * l_area)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        totals += torch.tensor([loss.item(), l_cam.item(), l_part.item(), l_comp.item(),
                                l_pres.item(), l_sep.item(), l_area.item()]) * len(idx)
    totals = ctx.all_reduce(torch.cat([totals, torch.tensor([float(len(order))])]))
    names = ("loss", "cam_loss", "part_loss", "compactness", "presence", "separation", "area")
    return dict(zip(names, (totals[:7] / totals[7].clamp_min(1)).tolist()))


@torch.no_grad()
def _val_accuracy(net, model, val_x, val_y, inputs, cached, ctx) -> dict[str, float]:
    net.eval()
    correct = torch.zeros(3)
    for i in range(0, len(val_y), 128):
        out = model(inputs(val_x[i:i + 128], False), cached=cached)
        y = val_y[i:i + 128].to(ctx.device)
        correct += torch.tensor([(out["cam_logits"].argmax(1) == y).sum().item(),
                                 (out["part_logits"].argmax(1) == y).sum().item(), len(y)])
    correct = ctx.all_reduce(correct)
    n = correct[2].clamp_min(1)
    return {"val_acc_cam": (100 * correct[0] / n).item(), "val_acc_parts": (100 * correct[1] / n).item()}

