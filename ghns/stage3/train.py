"""Stage 3 training loops, run by the same Ray Train runner as stages 1 and the localizer.

* ``image_classifier_loop``: the original-image classifier (whole images) and the object
  classifier (CAM/foreground object crops): ``lam * L_cls + (1 - lam) * L_triplet`` (paper:
  lam = 0.8 for both). The backbone starts from the localizer's weights (a whole-image classifier
  already trained on the same train split) and trains ``trainable_blocks`` blocks.
* ``parts_classifier_loop``: ``lam_p * L_cls + (1 - lam_p) * L_quad`` (Eq. 10) on the stage-1
  part embeddings; quadruplets (r, p, n+, n) take p and n as the hardest positive and negative of
  r in the batch and n+ as a generated hard negative of r's class (one made from r when the bank
  has one). With ``use_negatives=False`` the n+ term is removed: a triplet (r, p, n) with margin m1.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ghns.checkpoint import load_checkpoint
from ghns.data.catalog import Catalog
from ghns.data.tensors import augment, load_images, to_float
from ghns.losses import triplet_loss
from ghns.models.backbones import create_backbone
from ghns.models.classifiers import ImageClassifier
from ghns.sampling import pk_batches
from ghns.stage1.train import make_optimizer
from ghns.train.runner import WorkerContext


# -- original-image and object classifiers ------------------------------------------------------

def build_image_classifier(settings: dict[str, Any], pretrained: str | None = None) -> ImageClassifier:
    backbone = create_backbone(settings["backbone"], pretrained or settings["pretrained"])
    return ImageClassifier(backbone, settings["embedding_dim"], settings["num_classes"],
                           settings["frozen_blocks"])


def split_images(config: dict[str, Any], split: str, ctx: WorkerContext | None = None):
    """This worker's share of ``split``: images (whole or object crops) and labels."""
    catalog = Catalog.read(config["catalog"])
    rows = catalog.split(split)
    if ctx is not None:
        rows = rows.iloc[ctx.shard(len(rows))]
    boxes = None
    if config["crop"] == "object":
        loc = pd.read_parquet(config["localization"]).set_index("image_id")
        boxes = [tuple(loc.loc[i, [f"obj_{c}" for c in "xywh"]]) for i in rows["image_id"]]
    return load_images(rows, config["image_size"], boxes), torch.tensor(rows["label"].to_numpy())


def image_classifier_loop(config: dict[str, Any]) -> None:
    ctx = WorkerContext(config)
    torch.manual_seed(config["seed"] + ctx.rank)
    train_x, train_y = split_images(config, "train", ctx)
    val_x, val_y = split_images(config, "val", ctx)
    model = build_image_classifier(config)
    if config.get("init_from"):
        state = load_checkpoint(config["init_from"])["model"]
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        model.backbone.load_state_dict(backbone)
    cached = model.frozen_blocks > 0
    if cached:
        train_x = _trunk_outputs(model, train_x, ctx, config)
        val_x = _trunk_outputs(model, val_x, ctx, config)
    net = ctx.wrap(model)
    opt, sched = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    best = KeepBest()
    start = _restore(ctx, model, opt, sched, best)
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + ctx.rank + 17 * start)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ctx.amp else contextlib.nullcontext()
    lam = config["lam"]

    def inputs(x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float() if cached else to_float(x)
        if train:
            x = augment(x, gen, max_shift=0.0 if cached else 0.1)
        return x.to(ctx.device, non_blocking=True)

    for epoch in range(start, config["epochs"]):
        ctx.fail_once(epoch)
        t0 = time.perf_counter()
        net.train()
        if cached:
            model.backbone.blocks[: model.frozen_blocks].eval()
        sums = torch.zeros(4)
        for idx in pk_batches(train_y, config["batch_classes"], config["batch_images"], gen):
            y = train_y[idx].to(ctx.device)
            with autocast:
                emb, logits = net(inputs(train_x[idx], True), cached=cached)
                l_cls = F.cross_entropy(logits.float(), y)
                l_tri = triplet_loss(emb.float(), y, config["margin"], config["mining"])
                loss = lam * l_cls + (1 - lam) * l_tri
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.tensor([loss.item(), l_cls.item(), l_tri.item(), 1.0])
        sched.step()
        sums = ctx.all_reduce(sums)
        metrics = dict(zip(("loss", "cls", "triplet"), (sums[:3] / sums[3].clamp_min(1)).tolist()))
        model.eval()
        metrics["val_acc"] = _accuracy(lambda x: model(inputs(x, False), cached=cached)[1], val_x, val_y, ctx)
        best.update(model, metrics["val_acc"], epoch)
        metrics.update({"epoch": epoch, "epoch_seconds": time.perf_counter() - t0})
        ctx.report(metrics, {"model": model.state_dict(), "opt": opt.state_dict(),
                             "sched": sched.state_dict(), "epoch": epoch,
                             "best": best.dump()})
    if ctx.is_main:
        keys = ("backbone", "pretrained", "embedding_dim", "num_classes", "frozen_blocks",
                "image_size", "crop")
        kept = best.apply(model)
        _save(config["output"], model, {**{k: config[k] for k in keys}, "epoch_kept": kept})


def _trunk_outputs(model: ImageClassifier, images: torch.Tensor, ctx: WorkerContext,
                   config: dict[str, Any]) -> torch.Tensor:
    """The frozen blocks' outputs (half precision) for ``images``, computed once. With
    ``config["trunk_cache"]`` they are kept on disk under a key of the frozen weights and the
    pixels themselves, so classifiers that start from the same frozen weights and read the same
    images (the original classifier and its seed-ensemble copies) share one pass, and a changed
    crop, size or shard can never read another's entry."""
    model.to(ctx.device).eval()
    if not len(images):
        return images
    path = None
    if config.get("trunk_cache"):
        key = hashlib.sha1(model.trunk_digest().encode())
        key.update(str(tuple(images.shape)).encode())
        key.update(images.contiguous().numpy().tobytes())
        path = Path(config["trunk_cache"]) / f"{key.hexdigest()[:20]}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu")
            except Exception:  # a torn file from an interrupted writer: recompute it
                pass
    with torch.no_grad():
        out = torch.cat([model.trunk(to_float(images[i:i + 64]).to(ctx.device)).half().cpu()
                         for i in range(0, len(images), 64)])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(out, tmp)
        tmp.replace(path)
    return out


# -- parts classifier ------------------------------------------------------------------------

def parts_classifier_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the parts classifier (``ghns.stage3.parts`` does the work)."""
    from ghns.stage3.parts import NegativeBank, PartsData, PartsSettings, fit_parts_classifier

    ctx = WorkerContext(config)
    data = PartsData.read(Path(config["embeddings"]))
    shard = ctx.shard(len(data.train_y))
    data.train_x, data.train_y, data.train_ids = (data.train_x[shard], data.train_y[shard],
                                                  data.train_ids[shard])
    dim = data.train_x.shape[1]
    bank = (NegativeBank.read(Path(config["negatives"]), dim) if config["use_negatives"]
            else NegativeBank.empty(dim))
    settings = PartsSettings.from_dict(config)

    def on_epoch(metrics, model, opt, sched, best) -> None:
        ctx.fail_once(metrics["epoch"] + 1)
        ctx.report(metrics, {"model": model.state_dict(), "opt": opt.state_dict(),
                             "sched": sched.state_dict(), "epoch": metrics["epoch"],
                             "best": best.dump()})

    ctx.fail_once(0)
    model, best = fit_parts_classifier(
        data, bank, settings, config["num_classes"], config["seed"], config["use_negatives"],
        device=ctx.device, rank=ctx.rank, wrap=ctx.wrap, all_reduce=ctx.all_reduce,
        restore=lambda model, opt, sched, kept: _restore(ctx, model, opt, sched, kept),
        on_epoch=on_epoch)
    if ctx.is_main:
        out = {"n_parts": data.n_parts, "part_dim": data.part_dim,
               "embedding_dim": settings.embedding_dim, "num_classes": config["num_classes"],
               "hidden": settings.parts_hidden, "epoch_kept": best.epoch}
        _save(config["output"], model, out)


# -- shared ----------------------------------------------------------------------------------

def _restore(ctx: WorkerContext, model, opt, sched, best: "KeepBest") -> int:
    state = ctx.restore()
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    best.load(state.get("best"))
    return state["epoch"] + 1


class KeepBest:
    """The weights of the epoch with the best validation accuracy (the last epoch's when there
    is no validation split): short CPU runs at a constant learning rate end on a noisy epoch,
    and choosing on val keeps test untouched."""

    def __init__(self) -> None:
        self.acc, self.epoch, self.state = float("-inf"), -1, None

    def update(self, model, acc: float, epoch: int) -> None:
        if acc == acc and acc > self.acc:  # not NaN
            self.acc, self.epoch = acc, epoch
            self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def load(self, saved: dict | None) -> None:
        if saved:
            self.acc, self.epoch, self.state = saved["acc"], saved["epoch"], saved["state"]

    def dump(self) -> dict:
        return {"acc": self.acc, "epoch": self.epoch, "state": self.state}

    def apply(self, model) -> int:
        """Load the best weights into ``model``; returns the epoch they come from (-1: last)."""
        if self.state is not None:
            model.load_state_dict(self.state)
        return self.epoch


@torch.no_grad()
def _accuracy(predict, x: torch.Tensor, y: torch.Tensor, ctx: WorkerContext) -> float:
    correct = torch.zeros(2)
    for i in range(0, len(y), 256):
        logits = predict(x[i:i + 256])
        correct += torch.tensor([(logits.argmax(1).cpu() == y[i:i + 256]).sum().item(), len(y[i:i + 256])],
                                dtype=torch.float32)
    correct = ctx.all_reduce(correct)
    return (100 * correct[0] / correct[1].clamp_min(1)).item()


def _save(path: str, model, settings: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"model": model.state_dict(), "settings": settings}, tmp)
    tmp.replace(out)
