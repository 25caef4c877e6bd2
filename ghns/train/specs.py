"""Typed settings of the training loops: one frozen dataclass per loop, built from the Config by
``from_config(cfg, run, ...)``, handed to Ray Train as a plain dict (``to_loop_config``) and
rebuilt by the loop first thing (``of(loop_config)``).

Field names are the Config names they come from (``part_area``, ``triplet_margin``,
``lambda_image``, ``lr_step_epochs``), so grepping a Config field finds its reader. Nested:

* ``ModelSpec``: what builds a backbone-based model (and what its checkpoint records);
* ``OptimSpec``: the optimiser, its schedule and the number of epochs;
* ``WorkerSpec``: what the runner's ``WorkerContext`` needs (device, threads, history file,
  progress lines, fault injection for tests); the same for every loop.
"""

from __future__ import annotations

import dataclasses
import os
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ghns.config import Config

SPEC, WORKER = "spec", "worker"  # the two entries of a loop config
# at most one Ray Train report (and checkpoint) per this many seconds; GHNS_REPORT_SECONDS overrides it
# (the kill tests set 0: a checkpoint every epoch, so that a kill can land after one)
REPORT_SECONDS = float(os.environ.get("GHNS_REPORT_SECONDS", "10"))

S = TypeVar("S", bound="Spec")


class Spec:
    """``to_dict`` / ``from_dict`` for nested frozen dataclasses (JSON-able, for Ray)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[S], values: dict[str, Any]) -> S:
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown settings {unknown}")
        out = {}
        for name, value in values.items():
            kind = hints[name]
            out[name] = kind.from_dict(value) if isinstance(kind, type) and issubclass(kind, Spec) \
                and isinstance(value, dict) else value
        return cls(**out)

    @classmethod
    def of(cls: type[S], loop_config: dict[str, Any]) -> S:
        """The spec inside a loop config made by ``to_loop_config``."""
        return cls.from_dict(loop_config[SPEC])


@dataclass(frozen=True)
class WorkerSpec(Spec):
    """The runner's settings for one training run (``ghns.train.runner.WorkerContext``)."""

    device: str = "cpu"
    torch_threads: int | None = None
    amp: bool = True
    history_file: str | None = None
    epochs: int | None = None
    report_seconds: float = REPORT_SECONDS
    progress: bool = False
    run_name: str = "training"
    error_file: str | None = None
    fail_once_at_epoch: int | None = None  # fault injection (tests): the main worker dies once
    fail_marker: str | None = None
    checkpoint_file: str | None = None  # a local run's (not Ray Train's) last reported checkpoint
    ray_storage: str | None = None  # the run's Ray Train folder: a local run resumes from its checkpoint


def to_loop_config(spec: Spec | dict[str, Any], worker: WorkerSpec) -> dict[str, Any]:
    """What Ray Train passes to ``train_loop_per_worker``: plain dicts (a dict ``spec``, for
    tests' own loops, as it is)."""
    return {SPEC: spec.to_dict() if isinstance(spec, Spec) else spec, WORKER: worker.to_dict()}


def worker_of(loop_config: dict[str, Any]) -> WorkerSpec:
    return WorkerSpec.from_dict(loop_config.get(WORKER) or {})


@dataclass(frozen=True)
class ModelSpec(Spec):
    """A backbone-based model: the keys its checkpoint's settings keep (flat, as before specs)."""

    backbone: str
    pretrained: str
    num_classes: int
    frozen_blocks: int
    image_size: int

    @classmethod
    def for_backbone(cls, cfg: Config, num_classes: int, image_size: int, trainable_blocks: int,
                     pretrained_default: int = 0, weights: str | None = None,
                     freeze_as: str | None = None) -> "ModelSpec":
        """The config's backbone with ``weights`` (the config's ``pretrained`` if None), its
        leading blocks frozen as ``frozen_blocks_for`` says for a backbone with ``freeze_as``
        weights (``weights`` if None) and ``trainable_blocks``."""
        from ghns.models.backbones import frozen_blocks_for

        backbone = cfg.resolved_backbone()
        weights = cfg.pretrained if weights is None else weights
        frozen = frozen_blocks_for(backbone, freeze_as or weights, trainable_blocks, pretrained_default)
        return cls(backbone, weights, num_classes, frozen, image_size)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "ModelSpec":
        """From a checkpoint's settings (which may hold more keys)."""
        return cls(**{f.name: settings[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class OptimSpec(Spec):
    """The optimiser (``sgd`` or ``adamw``), a step schedule, the epochs."""

    lr: float
    epochs: int
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    lr_step_epochs: int = 10**9
    lr_gamma: float = 1.0

    @classmethod
    def from_config(cls, cfg: Config, lr: float, epochs: int) -> "OptimSpec":
        return cls(lr=lr, epochs=epochs, optimizer=cfg.optimizer, weight_decay=cfg.weight_decay,
                   lr_step_epochs=cfg.lr_step_epochs, lr_gamma=cfg.lr_gamma)

    def build(self, params) -> tuple[Any, Any]:
        """(optimiser, step schedule) over ``params``: SGD (momentum 0.9) or AdamW."""
        import torch

        opt: torch.optim.Optimizer
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=self.lr_step_epochs, gamma=self.lr_gamma)


def _path(p: Path) -> str:
    return str(Path(p).resolve())


@dataclass(frozen=True)
class TrainingSpec(Spec):
    """What every loop that trains one backbone-based model has: the model, its optimiser, the
    catalog it reads, the file it writes and its seed."""

    model: ModelSpec
    optim: OptimSpec
    catalog: str
    output: str
    seed: int


@dataclass(frozen=True)
class LocalizerSpec(TrainingSpec):
    """The localizer (``ghns.localize.train.localizer_loop``): AdamW with a one-cycle schedule
    (``optim.optimizer`` and the step schedule are not used)."""

    batch_size: int
    part_compactness: float
    part_presence: float
    part_separation: float
    part_area: float
    part_min_area: float
    trunks: str | None = None  # the stage-3 classifiers' frozen-trunk outputs of whole images, when shared
    trunk_blocks: int = 0  # how many leading blocks those outputs have been through

    @classmethod
    def from_config(cls, cfg: Config, run, num_classes: int) -> "LocalizerSpec":
        return cls(
            model=ModelSpec.for_backbone(cfg, num_classes, cfg.resolved_localize_size(),
                                         cfg.localize_trainable_blocks),
            optim=OptimSpec(lr=cfg.localize_lr, epochs=cfg.localize_epochs),
            catalog=_path(run.catalog), output=_path(run.path / "localize" / "model.pt"),
            seed=cfg.seed, batch_size=cfg.batch_size, part_compactness=cfg.part_compactness,
            part_presence=cfg.part_presence, part_separation=cfg.part_separation,
            part_area=cfg.part_area, part_min_area=cfg.part_min_area)


@dataclass(frozen=True)
class PartNetworksSpec(TrainingSpec):
    """Stage 1's three part networks (``ghns.train_parts.train.train_parts_loop``), paper Eq. 7."""

    localization: str
    embedding_dim: int
    discriminator_hidden: int
    alpha: float
    beta: float
    gamma: float
    triplet_margin: float
    triplet_mining: str
    batch_classes: int
    batch_images: int
    trunks: str | None = None  # the run's part-crop frozen-trunk outputs (ghns.train_parts.part_trunks), if made

    def settings(self) -> dict[str, Any]:
        """What the part networks' checkpoint records."""
        return {**self.model.to_dict(), "embedding_dim": self.embedding_dim,
                "discriminator_hidden": self.discriminator_hidden}

    @classmethod
    def from_config(cls, cfg: Config, run, num_classes: int) -> "PartNetworksSpec":
        return cls(
            model=ModelSpec.for_backbone(cfg, num_classes, cfg.resolved_part_size(), cfg.trainable_blocks,
                                         pretrained_default=1),
            optim=OptimSpec.from_config(cfg, cfg.stage1_lr, cfg.stage1_epochs),
            catalog=_path(run.catalog), localization=_path(run.localization),
            output=_path(run.part_networks), seed=cfg.seed, embedding_dim=cfg.embedding_dim,
            discriminator_hidden=cfg.discriminator_hidden, alpha=cfg.alpha, beta=cfg.beta,
            gamma=cfg.gamma, triplet_margin=cfg.triplet_margin, triplet_mining=cfg.triplet_mining,
            batch_classes=cfg.batch_classes, batch_images=cfg.batch_images)


@dataclass(frozen=True)
class ImageClassifierSpec(TrainingSpec):
    """The original-image and object classifiers (``ghns.train_final.train.image_classifier_loop``):
    ``lambda_image * L_cls + (1 - lambda_image) * L_triplet``, LP-FT."""

    localization: str
    crop: str  # "whole" or "object"
    lambda_image: float
    triplet_margin: float
    triplet_mining: str
    batch_classes: int
    batch_images: int
    replace_start_p: float = 1.0
    patience: int = 0
    init_from: str | None = None  # a checkpoint whose backbone to start from (the localizer's)
    trunks: str | None = None  # the run's frozen-trunk outputs for this crop (ghns.trunks), if made

    @classmethod
    def from_config(cls, cfg: Config, run, num_classes: int, crop: str, seed: int,
                    output: Path) -> "ImageClassifierSpec":
        """A pretrained backbone starts from its own weights (the features its linear probe, the
        bar, sees); one without weights from the localizer, already a whole-image classifier of
        this train split. Either way only the last block trains by default and the rest is
        cached once."""
        weights = cfg.resolved_weights()
        localizer = run.path / "localize" / "model.pt"
        init_from = _path(localizer) if weights == "none" and localizer.is_file() else None
        trainable = cfg.stage3_trainable_blocks if cfg.stage3_trainable_blocks >= 0 else cfg.trainable_blocks
        size = cfg.resolved_localize_size()
        if init_from and run.localization_json.is_file():  # the size its start was trained at
            size = json.loads(run.localization_json.read_text()).get("image_size", size)
        return cls(
            model=ModelSpec.for_backbone(cfg, num_classes, size, trainable,
                                         pretrained_default=1, weights=weights,
                                         freeze_as="localizer" if init_from else None),
            optim=OptimSpec.from_config(cfg, cfg.stage3_lr, cfg.stage3_epochs),
            catalog=_path(run.catalog), localization=_path(run.localization), output=_path(output),
            crop=crop, seed=seed, lambda_image=cfg.lambda_image, triplet_margin=cfg.triplet_margin,
            triplet_mining=cfg.triplet_mining, batch_classes=cfg.batch_classes,
            batch_images=cfg.batch_images, replace_start_p=cfg.replace_start_p,
            patience=cfg.patience, init_from=init_from)


@dataclass(frozen=True)
class PartsSettings:
    """How one parts classifier trains (``ghns.train_final.parts``; names as in ``ghns.config.Config``)."""

    parts_hidden: int
    lambda_parts: float
    quad_m1: float
    quad_m2: float
    parts_epochs: int
    parts_lr: float
    optimizer: str
    weight_decay: float
    lr_step_epochs: int
    lr_gamma: float
    batch_classes: int
    batch_images: int
    negatives_per_anchor: int = 1
    replace_start_p: float = 1.0
    patience: int = 0
    parts_keep: str = "better"
    negative_logits: str = "none"
    negative_logits_weight: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PartsSettings":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def from_config(cls, cfg: Config) -> "PartsSettings":
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})

    def optim(self):
        """The optimiser's settings (``OptimSpec``)."""
        return OptimSpec(lr=self.parts_lr, epochs=self.parts_epochs, optimizer=self.optimizer,
                         weight_decay=self.weight_decay, lr_step_epochs=self.lr_step_epochs,
                         lr_gamma=self.lr_gamma)


@dataclass(frozen=True)
class PartsClassifierSpec(Spec):
    """The parts classifier (``ghns.train_final.train.parts_classifier_loop``), paper Eq. 10."""

    parts: Any  # ghns.train_final.parts.PartsSettings (its own dataclass, Config names)
    embeddings: str
    negatives: str
    output: str
    num_classes: int
    seed: int
    use_negatives: bool

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PartsClassifierSpec":
        return cls(**_with_parts_settings(values))

    @classmethod
    def from_config(cls, cfg: Config, run, num_classes: int, use_negatives: bool,
                    output: Path) -> "PartsClassifierSpec":
        return cls(parts=PartsSettings.from_config(cfg), embeddings=_path(run.embeddings),
                   negatives=_path(run.negatives), output=_path(output), num_classes=num_classes,
                   seed=cfg.seed, use_negatives=use_negatives)


@dataclass(frozen=True)
class StudySpec(Spec):
    """``ghns study``'s parts classifiers (``ghns.study.study_loop``): jobs split over workers."""

    parts: Any  # PartsSettings
    embeddings: str
    jobs_dir: str
    num_classes: int
    jobs: list = field(default_factory=list)  # [{"name", "seed", "arm", "bank": None | {...}}]
    rejection: str | None = None  # part embeddings of the rejection images (ghns.rejection), if any
    train_per_class: int = 0  # the parts classifiers see at most this many train images per class (0: all)
    part_networks: dict | None = None  # {"run", "lr", "rejection_crops"}: the part networks train too

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StudySpec":
        return cls(**_with_parts_settings(values))


def _with_parts_settings(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with its ``parts`` entry as a ``PartsSettings``."""
    parts = values["parts"]
    return {**values, "parts": parts if isinstance(parts, PartsSettings) else PartsSettings.from_dict(parts)}
