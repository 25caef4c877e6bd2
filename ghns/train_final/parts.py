"""The parts image classifier (paper Eq. 9-10), trained on stage-1 part embeddings.

``lambda_p * L_cls + (1 - lambda_p) * L_quad``: quadruplets (r, p, n+, n) take p and n as the
hardest positive and negative of r in the batch and n+ as a generated hard negative of r's class
(one made from r itself when the bank has one). With ``use_negatives=False`` the n+ term is
removed: a triplet (r, p, n) with margin m1, the control arm. With ``source="mined"`` n+ is not
generated but mined among the batch's real images (``ghns.losses.mined_negatives``): the paper's
claim that generated negatives beat mined ones is then a comparison of two arms of one loop.

Beyond the quadruplet, a generated n+ can enter the loss through its own logits
(``negative_logits``): "not this class" (``-log(1 - p_c)``, c the class it was made from) or
outlier exposure (cross-entropy to the uniform distribution), weighted by
``negative_logits_weight``. A real image's features cannot tell the classifier that a set of parts
is *no* class; only a negative can, so this is where a composite carries what real data does not.

One function trains one classifier (``fit_parts_classifier``); the stage-3 Ray Train loop and the
study's loop (``ghns study``: many seeds and arms in one Ray Train run) both call it, so the two
train exactly the same way. The same classifier with its part networks training too (the paper's
stage 3, ``ghns study --part-networks-lr``) is ``ghns.train_final.part_networks``; both use
``parts_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from ghns.losses import mined_metric_loss, not_class_loss, parts_metric_loss, uniform_loss
from ghns.models import N_PARTS
from ghns.models.classifiers import PARTS_FORMAT, PartsClassifier
from ghns.models.registry import create_model
from ghns.sampling import pk_batches
from ghns.train.epochs import LOCAL, Evaluation, Host, KeepBest, Training, run_epochs
from ghns.train.specs import PartsSettings
from ghns.train.streams import Streams


@dataclass
class PartsData:
    """Concatenated part embeddings (rows: images) of the train and val splits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    train_ids: np.ndarray
    val_x: torch.Tensor
    val_y: torch.Tensor
    n_parts: int
    part_dim: int

    @classmethod
    def read(cls, embeddings: Path, shard: slice | None = None) -> "PartsData":
        from ghns.train_parts.table import read_embeddings

        meta, emb = read_embeddings(Path(embeddings))
        flat = torch.from_numpy(emb.reshape(len(emb), -1))
        labels = meta["label"].to_numpy()
        train = np.nonzero((meta["split"] == "train").to_numpy())[0]
        if shard is not None:
            train = train[shard]
        val = np.nonzero((meta["split"] == "val").to_numpy())[0]
        return cls(flat[train], torch.from_numpy(labels[train]), meta["image_id"].to_numpy()[train],
                   flat[val], torch.from_numpy(labels[val]), emb.shape[1], emb.shape[2])


@dataclass
class NegativeBank:
    """Generated hard negatives as set embeddings, indexed by class and by reference image."""

    x: torch.Tensor
    by_class: dict[int, np.ndarray] = field(default_factory=dict)
    by_ref: dict[int, np.ndarray] = field(default_factory=dict)
    sources: np.ndarray | None = None  # (M, P) image id of each set's part k (its provenance)

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def empty(cls, dim: int) -> "NegativeBank":
        return cls(torch.zeros(0, dim), sources=np.zeros((0, N_PARTS), np.int64))

    @classmethod
    def read(cls, folder: Path, dim: int, per_class: int | None = None) -> "NegativeBank":
        """The bank in ``folder``; with ``per_class``, each class's first ``per_class`` negatives
        (the generator keeps them in its visiting order, so this is exactly the bank a run with
        that per-class budget would have made)."""
        from ghns.generate.bank import read_bank

        meta, emb = read_bank(Path(folder))
        if meta.empty or emb is None:
            return cls.empty(dim)
        if per_class is not None:
            keep = (meta.groupby("class").cumcount() < per_class).to_numpy()
            meta, emb = meta[keep].reset_index(drop=True), emb[keep]
        bank = cls(torch.from_numpy(emb))
        bank.sources = meta[[f"part{k + 1}_image" for k in range(N_PARTS)]].to_numpy(np.int64)
        bank.by_class = {int(c): rows for c, rows in meta.groupby("class").indices.items()}
        bank.by_ref = {int(r): rows for r, rows in meta.groupby("ref_image").indices.items()}
        return bank


SOURCES = ("generated", "mined")
NEGATIVE_LOGITS = ("none", "not_class", "uniform")
FORMAT = PARTS_FORMAT  # checkpoints of format 1 (a 128-d projection from scratch) predate LP-FT


def build_parts_classifier(data: PartsData, settings: PartsSettings, num_classes: int) -> PartsClassifier:
    return create_model("parts_classifier", {"n_parts": data.n_parts, "part_dim": data.part_dim,
                                             "num_classes": num_classes, "hidden": settings.parts_hidden})


def parts_probe(data: PartsData, num_classes: int):
    """The linear probe of the concatenated part embeddings (train, L2 chosen on val): the
    parts classifier's start."""
    from ghns.probe import fit_probe

    return fit_probe(data.train_x, data.train_y, data.val_x, data.val_y, num_classes)


def load_parts_classifier(path: Path) -> PartsClassifier:
    """A saved parts classifier (``<run>/train-final/parts*.pt``), ready for inference."""
    from ghns.checkpoint import load_model

    return load_model(path, "parts_classifier")[0]


def fit_parts_classifier(data: PartsData, bank: NegativeBank, settings: PartsSettings,
                         num_classes: int, seed: int, use_negatives: bool, *, source: str = "generated",
                         device: torch.device = torch.device("cpu"), rank: int = 0,
                         wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
                         all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                         common_steps: Callable[[int], int] = lambda n: n,
                         host: Host = LOCAL, probe=None):
    """Train one parts classifier; returns ``(model with its best-val-epoch weights, KeepBest)``.

    It starts from ``probe`` (``parts_probe`` of the whole train split; fitted here from ``data``
    when not given), and the start competes with every epoch on val (as epoch -1): fine-tuning
    that does not beat the probe on val keeps the probe. The epochs run in
    ``ghns.train.epochs.run_epochs`` on ``host`` (a Ray Train worker's context: resume and
    reporting; a plain process by default); ``wrap`` (DDP) and ``all_reduce`` (metrics over
    workers) default to a single process. ``source`` says where n+ comes from when
    ``use_negatives``: "generated" (``bank``) or "mined" (the batch's real images; ``bank`` unused)."""
    if source not in SOURCES:
        raise ValueError(f"unknown negative source {source!r}; expected one of {SOURCES}")
    torch.manual_seed(seed + rank)
    mined = use_negatives and source == "mined"
    bank = bank if use_negatives and not mined else NegativeBank.empty(data.train_x.shape[1])
    model = build_parts_classifier(data, settings, num_classes)
    model.start_from(probe if probe is not None else parts_probe(data, num_classes))
    model.to(device)
    opt, sched = settings.optim().build([p for p in model.parameters() if p.requires_grad])
    best = KeepBest(settings.replace_start_p, settings.patience, settings.parts_keep)
    t = Training(model, opt, sched, Streams(seed * 1000 + rank), best)
    net = wrap(model)

    def evaluate() -> Evaluation:
        acc, correct = val_correct(model, data, device)
        return {"val_acc": acc}, correct

    run_epochs(host, t, settings.parts_epochs,
               lambda: _parts_classifier_epoch(data, bank, settings, net, opt, t.streams, device,
                                               common_steps, all_reduce, mined),
               evaluate, old_seed=lambda start: seed * 1000 + rank + 17 * start,
               extra={"bank_size": len(bank), "negatives": source if use_negatives else "none"})
    return model.eval(), best


def draw_negatives(bank: NegativeBank, batch: np.ndarray, ids: np.ndarray, labels: torch.Tensor,
                   rng: np.random.Generator, per_anchor: int) -> tuple[np.ndarray, np.ndarray]:
    """For the train rows ``batch``: (anchor positions with an n+, each repeated ``per_anchor``
    times; bank rows of their n+, drawn from those made from the anchor itself, else from its
    class's)."""
    pos, rows = [], []
    for i, b in enumerate(batch):
        own = bank.by_ref.get(int(ids[b]))
        pool = own if own is not None else bank.by_class.get(int(labels[b]))
        if pool is not None and len(pool):
            for _ in range(per_anchor):
                pos.append(i)
                rows.append(int(pool[rng.integers(len(pool))]))
    return np.asarray(pos, np.int64), np.asarray(rows, np.int64)


def _parts_classifier_epoch(data: PartsData, bank: NegativeBank, settings: PartsSettings, net, opt,
                            streams, device: torch.device, common_steps: Callable[[int], int],
                            all_reduce: Callable[[torch.Tensor], torch.Tensor],
                            mined: bool = False) -> dict[str, float]:
    """One epoch of Eq. 10 on P-K batches, each anchor's n+ from the bank (or, ``mined``, from the
    batch), plus the negatives' logit term where set; the mean losses over workers."""
    train_y = data.train_y
    net.train()
    sums = torch.zeros(4)
    batches = list(pk_batches(train_y, settings.batch_classes, settings.batch_images, streams.torch))
    for idx in batches[:common_steps(len(batches))]:
        y = train_y[idx].to(device)
        pos, rows = draw_negatives(bank, idx.numpy(), data.train_ids, train_y, streams.numpy,
                                   settings.negatives_per_anchor)
        x = data.train_x[idx]
        if len(rows):
            x = torch.cat([x, bank.x[rows]])
        f, all_logits = net(x.to(device))
        loss, l_cls, l_metric = parts_loss(f, all_logits, y, pos, settings, mined)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums += torch.tensor([loss.item(), l_cls.item(), float(l_metric.detach()), 1.0])
    sums = all_reduce(sums)
    return dict(zip(("loss", "cls", "quad"), (sums[:3] / sums[3].clamp_min(1)).tolist()))


def parts_loss(f: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, pos: np.ndarray,
               settings: PartsSettings, mined: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 10 on a batch: rows ``len(y)`` onwards of the set embeddings ``f`` and ``logits`` are
    generated n+, row j that of anchor ``pos[j]``; ``mined``: n+ mined among the real rows instead.
    Plus, where set, the negatives' own logit term. Returns (loss, its L_cls, its metric term)."""
    lam, m1, m2 = settings.lambda_parts, settings.quad_m1, settings.quad_m2
    f_real, real_logits = f[: len(y)], logits[: len(y)]
    l_cls = F.cross_entropy(real_logits, y)
    if mined:
        l_metric = mined_metric_loss(f_real, y, m1, m2)
    else:
        l_metric = parts_metric_loss(f_real, y, f[len(y):], pos, m1, m2, settings.negatives_per_anchor)
    loss = lam * l_cls + (1 - lam) * l_metric
    if len(pos) and settings.negative_logits != "none" and settings.negative_logits_weight > 0:
        neg_logits = logits[len(y):]
        made_from = y[torch.from_numpy(pos).to(y.device)]
        l_neg = (not_class_loss(neg_logits, made_from) if settings.negative_logits == "not_class"
                 else uniform_loss(neg_logits))
        loss = loss + settings.negative_logits_weight * l_neg
    return loss, l_cls, l_metric


@torch.no_grad()
def val_correct(model: PartsClassifier, data: PartsData, device) -> tuple[float, torch.Tensor]:
    """Val top-1 (percent) and each val image's correctness (every worker holds all of val)."""
    if not len(data.val_y):
        return float("nan"), torch.zeros(0, dtype=torch.bool)
    right = torch.cat([model(data.val_x[i:i + 256].to(device))[1].argmax(1).cpu() == data.val_y[i:i + 256]
                       for i in range(0, len(data.val_y), 256)])
    return (100.0 * right.float().mean()).item(), right


@torch.no_grad()
def parts_softmax(model: PartsClassifier, sets: np.ndarray) -> np.ndarray:
    """(N, P, D) or (N, P*D) part embeddings -> (N, C) softmax scores."""
    x = torch.from_numpy(np.asarray(sets, dtype=np.float32).reshape(len(sets), -1))
    return model.eval()(x)[1].softmax(1).numpy()
