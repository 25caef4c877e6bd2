"""Stage 3 training loops, run by the same Ray Train runner as stages 1 and the localizer.

* ``image_classifier_loop``: the original-image classifier (whole images) and the object
  classifier (CAM/foreground object crops): ``lam * L_cls + (1 - lam) * L_triplet`` (paper:
  lam = 0.8 for both), linear probe first, then fine-tuning (LP-FT). The backbone is the
  pretrained one (the features its probe sees) or, for a backbone without pretrained weights, the
  localizer's (a whole-image classifier already trained on the same train split); it trains
  ``trainable_blocks`` blocks.
* ``parts_classifier_loop``: ``lam_p * L_cls + (1 - lam_p) * L_quad`` (Eq. 10) on the stage-1
  part embeddings; quadruplets (r, p, n+, n) take p and n as the hardest positive and negative of
  r in the batch and n+ as a generated hard negative of r's class (one made from r when the bank
  has one). With ``use_negatives=False`` the n+ term is removed: a triplet (r, p, n) with margin m1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch.nn import functional as F

from ghns.checkpoint import load_checkpoint, save_checkpoint
from ghns.data.catalog import Catalog
from ghns.data.tensors import augment, load_images, to_float
from ghns.losses import triplet_loss
from ghns.models.backbones import cpu_layout
from ghns.models.classifiers import IMAGE_FORMAT, ImageClassifier, build_image_classifier
from ghns.sampling import pk_batches
from ghns.train.epochs import Evaluation, KeepBest, Training, run_epochs
from ghns.train.runner import WorkerContext
from ghns.train.specs import ImageClassifierSpec, PartsClassifierSpec
from ghns.train.streams import Streams


# -- original-image and object classifiers ------------------------------------------------------

def load_image_classifier(path) -> tuple[ImageClassifier, dict[str, Any]]:
    """A saved original / object classifier (``<run>/train-final/*.pt``) and its settings."""
    from ghns.checkpoint import load_model

    return load_model(path, "image_classifier")


def split_images(spec: ImageClassifierSpec, split: str, ctx: WorkerContext | None = None):
    """This worker's share of ``split``: images (whole or object crops), labels, and where the
    share sits in the whole split (``(slice, size of the split)``)."""
    catalog = Catalog.read(spec.catalog)
    rows = catalog.split(split)
    n = len(rows)
    share = ctx.shard(n) if ctx is not None else slice(0, n)
    rows = rows.iloc[share]
    boxes = None
    if spec.crop == "object":
        loc = pd.read_parquet(spec.localization).set_index("image_id")
        boxes = [tuple(loc.loc[i, [f"obj_{c}" for c in "xywh"]]) for i in rows["image_id"]]
    return (load_images(rows, spec.model.image_size, boxes), torch.tensor(rows["label"].to_numpy()),
            (share, n))


def _gather(ctx: WorkerContext, local: torch.Tensor, where: tuple[slice, int]) -> torch.Tensor:
    """The whole split's rows from every worker's share (each row is non-zero on one worker)."""
    share, n = where
    full = torch.zeros(n, *local.shape[1:], dtype=local.dtype)
    full[share] = local
    return ctx.all_reduce(full)


@dataclass
class _Split:
    """One split's share on this worker: images (or the frozen trunk's outputs), the same of the
    mirror images, labels, and where the share sits in the whole split."""

    x: torch.Tensor
    xf: torch.Tensor
    y: torch.Tensor
    where: tuple[slice, int]


def start_model(spec: ImageClassifierSpec) -> ImageClassifier:
    """The classifier before LP-FT: its backbone's own weights, or ``init_from``'s backbone."""
    model = build_image_classifier(spec.model.to_dict())
    if spec.init_from:
        state = load_checkpoint(spec.init_from)["model"]
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        model.backbone.load_state_dict(backbone)
    return model


def _views(spec: ImageClassifierSpec, ctx: WorkerContext, model: ImageClassifier) -> tuple[_Split, _Split]:
    """Train and val shares, each image with its mirror image: with a frozen trunk its outputs
    of both (an exact flip augmentation and flip-averaged features), read from the run's trunk
    outputs (``ghns.trunks``) where the stage made them, else computed here; without one the
    images."""
    if model.frozen_blocks > 0 and spec.trunks:
        return _stored_split(spec, ctx, model, "train"), _stored_split(spec, ctx, model, "val")
    train_x, train_y, train_where = split_images(spec, "train", ctx)
    val_x, val_y, val_where = split_images(spec, "val", ctx)
    if model.frozen_blocks > 0:
        train_f, val_f = _trunk_outputs(model, train_x.flip(-1), ctx), _trunk_outputs(model, val_x.flip(-1), ctx)
        train_x, val_x = _trunk_outputs(model, train_x, ctx), _trunk_outputs(model, val_x, ctx)
    else:
        train_f, val_f = train_x.flip(-1), val_x.flip(-1)
    return _Split(train_x, train_f, train_y, train_where), _Split(val_x, val_f, val_y, val_where)


def _stored_split(spec: ImageClassifierSpec, ctx: WorkerContext, model: ImageClassifier, split: str) -> _Split:
    """This worker's share of ``split`` from the run's frozen-trunk outputs."""
    from ghns.trunks import read_trunks

    assert spec.trunks is not None
    rows = Catalog.read(spec.catalog).split(split)
    data = read_trunks(spec.trunks, split, rows["image_id"].to_numpy(), model.trunk_digest())
    share = ctx.shard(len(rows))
    model.to(ctx.device).eval()
    cpu_layout(model, ctx.device)  # the trainable blocks in the layout they run in
    return _Split(data["x"][share], data["xf"][share], torch.tensor(rows["label"].to_numpy())[share],
                  (share, len(rows)))


def image_classifier_loop(config: dict[str, Any]) -> None:
    """Linear probe, then fine-tune (LP-FT): the probe of the flip-averaged pooled features of the
    whole train split (L2 chosen on val) is the start and competes with every epoch on val."""
    spec, ctx = ImageClassifierSpec.of(config), WorkerContext(config)
    torch.manual_seed(spec.seed + ctx.rank)
    model = start_model(spec)
    cached = model.frozen_blocks > 0
    train, val = _views(spec, ctx, model)
    model.to(ctx.device)

    def inputs(x: torch.Tensor) -> torch.Tensor:
        return (x.float() if cached else to_float(x)).to(ctx.device, non_blocking=True)

    def evaluate() -> Evaluation:
        acc, correct = _correct(lambda i: model.flip_averaged_logits(inputs(val.x[i]), inputs(val.xf[i]), cached),
                                torch.arange(len(val.y)), val.y, ctx, val.where)
        return {"val_acc": acc}, correct

    net = ctx.wrap(model)
    opt, sched = spec.optim.build([p for p in model.parameters() if p.requires_grad])
    seed = spec.seed * 1000 + ctx.rank
    best = KeepBest(spec.replace_start_p, spec.patience)
    t = Training(model, opt, sched, Streams(seed), best)
    kept = run_epochs(  # LP: the probe on the whole train split, the same on every worker; then FT
        ctx, t, spec.optim.epochs,
        lambda: _image_epoch(spec, ctx, net, model, opt, train, inputs, t.streams.torch), evaluate,
        start=lambda: _start_from_probe(model, train, val, ctx, inputs, spec.model.num_classes),
        old_seed=lambda start: seed + 17 * start)
    if ctx.is_main:
        save_checkpoint(spec.output, model, {**spec.model.to_dict(), "crop": spec.crop, "format": IMAGE_FORMAT,
                                             "epoch_kept": kept, "val_accuracy": best.acc})


def _start_from_probe(model: ImageClassifier, train: _Split, val: _Split, ctx: WorkerContext,
                      inputs: Callable[[torch.Tensor], torch.Tensor], num_classes: int) -> None:
    """LP: the linear probe of the flip-averaged pooled features of the whole train split (L2
    chosen on val), fitted the same on every worker, becomes the classifier's head."""
    from ghns.probe import fit_probe

    cached = model.frozen_blocks > 0

    @torch.no_grad()
    def pooled(split: _Split) -> torch.Tensor:
        model.eval()
        x, xf = split.x, split.xf
        return torch.cat([((model.pooled(inputs(x[i:i + 128]), cached)
                            + model.pooled(inputs(xf[i:i + 128]), cached)) / 2).cpu()
                          for i in range(0, len(x), 128)]) if len(x) else torch.zeros(0, model.mean.numel())

    probe = fit_probe(_gather(ctx, pooled(train), train.where), _gather(ctx, train.y, train.where),
                      _gather(ctx, pooled(val), val.where), _gather(ctx, val.y, val.where), num_classes)
    model.start_from(probe)


def _image_epoch(spec: ImageClassifierSpec, ctx: WorkerContext, net, model: ImageClassifier, opt,
                 train: _Split, inputs: Callable[[torch.Tensor], torch.Tensor],
                 gen: torch.Generator) -> dict[str, float]:
    """One epoch of ``lambda_image * L_cls + (1 - lambda_image) * L_triplet`` on P-K batches, each
    image or its mirror image at random; the mean losses over workers."""
    cached = model.frozen_blocks > 0
    autocast = ctx.autocast()
    lam = spec.lambda_image
    net.train()
    if cached:  # a frozen trunk, and the batch-norm statistics of the blocks that train kept
        # too: P-K batches of 32 images from 8 classes are too few and too skewed to re-estimate
        # them (on CUB-50 the first epoch fell from the probe's ~95 val top-1 to 58-81 with them
        # updating, to 93 without)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()

    def batch(idx: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = inputs(torch.where(flip.view(-1, *[1] * (train.x.dim() - 1)), train.xf[idx], train.x[idx]))
        return x if cached else augment(x, gen, flip=False, max_shift=0.1)

    sums = torch.zeros(4)
    batches = list(pk_batches(train.y, spec.batch_classes, spec.batch_images, gen))
    for idx in batches[:ctx.common_steps(len(batches))]:
        y = train.y[idx].to(ctx.device)
        with autocast:
            emb, logits = net(batch(idx), cached=cached)
            l_cls = F.cross_entropy(logits.float(), y)
            l_tri = triplet_loss(emb.float(), y, spec.triplet_margin, spec.triplet_mining)
            loss = lam * l_cls + (1 - lam) * l_tri
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums += torch.tensor([loss.item(), l_cls.item(), l_tri.item(), 1.0])
    sums = ctx.all_reduce(sums)
    return dict(zip(("loss", "cls", "triplet"), (sums[:3] / sums[3].clamp_min(1)).tolist()))


def _trunk_outputs(model: ImageClassifier, images: torch.Tensor, ctx: WorkerContext) -> torch.Tensor:
    """The frozen blocks' outputs (half precision) for ``images``, in batches, in the CPU layout
    (the model keeps it: its trainable blocks run in it too)."""
    model.to(ctx.device).eval()
    layout = cpu_layout(model, ctx.device)
    if not len(images):
        return images
    with torch.no_grad():
        return torch.cat([model.trunk(to_float(images[i:i + 64]).to(ctx.device).contiguous(memory_format=layout))
                          .contiguous().half().cpu() for i in range(0, len(images), 64)])


# -- parts classifier ------------------------------------------------------------------------

def parts_classifier_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the parts classifier (``ghns.train_final.parts`` does the work)."""
    from ghns.train_final.parts import FORMAT, NegativeBank, PartsData, fit_parts_classifier, parts_probe

    spec, ctx = PartsClassifierSpec.of(config), WorkerContext(config)
    data = PartsData.read(Path(spec.embeddings))
    probe = parts_probe(data, spec.num_classes)  # on the whole train split, before sharding
    shard = ctx.shard(len(data.train_y))
    data.train_x, data.train_y, data.train_ids = (data.train_x[shard], data.train_y[shard],
                                                  data.train_ids[shard])
    dim = data.train_x.shape[1]
    bank = NegativeBank.read(Path(spec.negatives), dim) if spec.use_negatives else NegativeBank.empty(dim)
    model, best = fit_parts_classifier(
        data, bank, spec.parts, spec.num_classes, spec.seed, spec.use_negatives,
        device=ctx.device, rank=ctx.rank, wrap=ctx.wrap, all_reduce=ctx.all_reduce,
        common_steps=ctx.common_steps, host=ctx, probe=probe)
    if ctx.is_main:
        out = {"format": FORMAT, "n_parts": data.n_parts, "part_dim": data.part_dim,
               "num_classes": spec.num_classes, "hidden": spec.parts.parts_hidden,
               "epoch_kept": best.epoch, "val_accuracy": best.acc}
        save_checkpoint(spec.output, model, out)


@torch.no_grad()
def _correct(predict, x: torch.Tensor, y: torch.Tensor, ctx: WorkerContext,
             where: tuple[slice, int]) -> tuple[float, torch.Tensor]:
    """Percent of the whole split that ``predict`` (of batches of this worker's ``x``) gets
    right, and each image's correctness in the split's order, over every worker."""
    local = torch.cat([predict(x[i:i + 256]).argmax(1).cpu() == y[i:i + 256]
                       for i in range(0, len(y), 256)]) if len(y) else torch.zeros(0, dtype=torch.bool)
    full = _gather(ctx, local.float(), where) > 0.5
    return (100.0 * full.float().mean()).item() if len(full) else float("nan"), full


