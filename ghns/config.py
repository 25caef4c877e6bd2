"""The one configuration of a ghns run.

A flat, typed dataclass. Its keys are exactly the command-line flags (``per_class`` in YAML is
``--per-class`` on the command line); the CLI builds its options from these fields, so the two
cannot drift. Resolution order, later wins: defaults < the run directory's saved
``config.yaml`` < ``--config FILE.yaml`` < flags. Every value is checked here, and a bad one is
a ``ConfigError`` with a one-line message naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ghns.errors import ConfigError
from ghns.atomic import atomic_write_text

DATASETS = ("synthetic", "cub", "cars", "aircraft", "deepfashion", "imagefolder")
BACKBONE_NAMES = ("tiny_cnn", "resnet18", "resnet50", "vgg16", "efficientnet_lite0")  # the registry's


_NEW = object()  # marks an option that has been there from the start


SEED_MAX = 2**31 - 1  # seeds are combined (seed * 1000 + worker, ...) and must stay within torch's int64


def _opt(default, help: str, *, choices: Iterable[str] | None = None, low=None, high=None,
         low_open: bool = False, high_open: bool = False, section: str = "run", before=_NEW):
    """A config field with its CLI help text and the bounds it is validated against.

    ``before``: for an option added after runs were saved without it, the value that reproduces
    what those runs did (a saved run config or stage record that lacks the key reads as it).
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None, "low": low,
            "high": high, "low_open": low_open, "high_open": high_open, "section": section}
    if before is not _NEW:
        meta["before"] = before
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # -- data ------------------------------------------------------------------------------
    dataset: str = _opt("synthetic", "Dataset reader.", choices=DATASETS, section="catalog")
    root: str | None = _opt(None, "Dataset root folder (synthetic: where images are rendered; "
                                  "default a per-user cache).", section="catalog")
    val_fraction: float = _opt(0.1, "Share of each class's train images carved out as the "
                                     "validation split (stratified, seeded).",
                               low=0.0, high=1.0, high_open=True, section="catalog")
    min_val_images: int = _opt(150, "Fewest images of a validation split carved from train: where "
                                    "--val-fraction would carve fewer, the share rises (to at most "
                                    "0.25) until it holds this many; 0 = --val-fraction as given.",
                               low=0, section="catalog", before=0)
    test_fraction: float = _opt(0.25, "Share of each class held out as test where a dataset "
                                      "has no test split (one-folder ImageFolder, synthetic).",
                                low=0.0, high=1.0, low_open=True, high_open=True, section="catalog")
    verify_images: str = _opt("full", "Check every image when cataloguing: 'full' decodes it "
                                      "(catches truncated files), 'header' reads only its header.",
                              choices=("full", "header"), section="catalog")
    max_image_pixels: int = _opt(89_478_485, "Images with more pixels (width x height, read from "
                                             "the header before decoding) are skipped when "
                                             "cataloguing and refused by predict: a decompression "
                                             "bomb costs no memory. Default: PIL's own threshold.",
                                 low=1, section="catalog")
    max_image_bytes: int = _opt(256 * 2**20, "Image files larger than this on disk (bytes) are "
                                             "skipped when cataloguing and refused by predict, "
                                             "before any byte is read; 0 = no limit.",
                                low=0, section="catalog", before=0)
    synthetic_classes: int = _opt(20, "Synthetic dataset: number of classes.", low=2, high=64,
                                  section="catalog")
    synthetic_per_class: int = _opt(120, "Synthetic dataset: images per class.", low=4,
                                    section="catalog")
    synthetic_image_size: int = _opt(96, "Synthetic dataset: image side in pixels.", low=32,
                                     high=1024, section="catalog")
    synthetic_near_misses: int = _opt(200, "Synthetic dataset: near-miss images (a class with one "
                                           "part changed to a combination that is no class), "
                                           "never trained on; evaluate reports how well "
                                           "confidence rejects them (AUROC). 0 = none.",
                                      low=0, section="catalog", before=0)
    open_set_classes: int = _opt(0, "Hold out this many classes as unknown: never trained on, "
                                    "their images scored against the known test images (open-set "
                                    "AUROC). Chosen by a fixed rule: the classes whose names have "
                                    "the smallest CRC-32. 0 = none.", low=0, section="catalog",
                                 before=0)
    synthetic_seed: int = _opt(0, "Synthetic dataset: seed of its pixels (the split seed is --seed).",
                               low=0, high=SEED_MAX, section="catalog")
    seed: int = _opt(0, "Seed for the validation split, sampling and initialisation.", low=0,
                     high=SEED_MAX, section="catalog")
    # -- localization ----------------------------------------------------------------------
    backbone: str = _opt("auto", "Backbone of every network: tiny_cnn, resnet18, resnet50, vgg16, "
                                 "efficientnet_lite0; 'auto' takes tiny_cnn on the synthetic "
                                 "dataset and efficientnet_lite0 elsewhere.", section="localize",
                       choices=("auto",) + BACKBONE_NAMES)
    pretrained: str = _opt("auto", "Backbone weights: 'imagenet', 'none' or a state-dict file; "
                                   "'auto' is imagenet where the backbone has it.", section="localize")
    localize_image_size: int = _opt(0, "Side of the images the localizer (and the image "
                                       "classifiers that start from it) sees; 0 = 224, or on the "
                                       "synthetic set its image size, at most 80.",
                                    low=0, high=2048, section="localize")
    localize_epochs: int = _opt(40, "Epochs of the localizer (CAM and part heads).", low=1,
                                section="localize")
    localize_lr: float = _opt(2e-3, "Peak learning rate of the localizer (AdamW, one-cycle).",
                              low=0.0, low_open=True, section="localize")
    localize_trainable_blocks: int = _opt(-1, "Backbone blocks the localizer trains (the rest is "
                                              "frozen and cached); -1 = all when the backbone "
                                              "starts from scratch, 0 when it is pretrained.",
                                          low=-1, section="localize")
    object_method: str = _opt("parts", "Object boxes: 'parts' (the localizer's foreground: one "
                                       "minus the background assignment), 'cam' (class activation "
                                       "map, largest region) or 'oracle' (the dataset's boxes).",
                              choices=("parts", "cam", "oracle"), section="localize")
    part_method: str = _opt("learned", "Part boxes: 'learned' (part prototypes) or 'oracle' "
                                       "(synthetic part boxes, CUB part_locs).",
                            choices=("learned", "oracle"), section="localize")
    cam_threshold: float = _opt(0.2, "CAM threshold, as a fraction of the map's maximum.",
                                low=0.0, high=1.0, low_open=True, high_open=True, section="localize")
    foreground_threshold: float = _opt(0.5, "Foreground threshold of the 'parts' object method.",
                                       low=0.0, high=1.0, low_open=True, high_open=True,
                                       section="localize")
    part_box_scale: float = _opt(0.0, "Side of a part box as a fraction of the object box's "
                                      "longer side; 0 = 0.5 when the backbone is pretrained, 0.4 "
                                      "from scratch.", low=0.0, high=1.0, section="localize")
    part_compactness: float = _opt(1.0, "Weight of the part compactness loss.", low=0.0,
                                   section="localize")
    part_presence: float = _opt(1.0, "Weight of the part presence loss.", low=0.0,
                                section="localize")
    part_separation: float = _opt(5.0, "Weight of the part separation loss (part centres at "
                                       "least 0.2 of the image apart).", low=0.0, section="localize")
    part_area: float = _opt(30.0, "Weight of the part area loss (each part covers at least "
                                  "--part-min-area of the map).", low=0.0, section="localize",
                            before=0.0)
    part_min_area: float = _opt(0.06, "Smallest share of the map a part should cover (part area "
                                      "loss).", low=0.0, high=1.0, section="localize")
    # -- stage 1: part networks and FilterNet ------------------------------------------------
    alpha: float = _opt(1.0, "Weight of the classification loss (Eq. 7).", low=0.0, section="train-parts")
    beta: float = _opt(0.8, "Weight of the triplet loss (Eq. 7); 0 drops it.", low=0.0,
                       section="train-parts")
    gamma: float = _opt(1.0, "Weight of the adversarial (shuffled-set) loss (Eq. 7); 0 drops it.",
                        low=0.0, section="train-parts")
    triplet_margin: float = _opt(0.2, "Triplet margin m (Eq. 2) on unit-length embeddings.",
                                 low=0.0, low_open=True, high=4.0, section="train-parts")
    triplet_mining: str = _opt("hard", "Triplets of a batch: 'hard' (hardest positive and negative "
                                       "per anchor) or 'all'.", choices=("hard", "all"),
                               section="train-parts")
    embedding_dim: int = _opt(128, "Part embedding dimension D.", low=2, high=8192, section="train-parts")
    part_image_size: int = _opt(0, "Side of the part crops; 0 = the localizer's image size when "
                                   "the backbone is pretrained (the scale its weights learned), "
                                   "half of it (at least 48) from scratch.", low=0, high=2048,
                                section="train-parts")
    stage1_epochs: int = _opt(30, "Epochs of stage 1.", low=1, section="train-parts")
    stage1_lr: float = _opt(0.05, "Initial learning rate of stage 1 (paper: SGD 0.05).", low=0.0,
                            low_open=True, section="train-parts")
    optimizer: str = _opt("sgd", "Optimizer of stages 1 and 3: 'sgd' (momentum 0.9, the paper's) or "
                                 "'adamw'.", choices=("sgd", "adamw"), section="train-parts")
    weight_decay: float = _opt(5e-4, "Weight decay of stages 1 and 3.", low=0.0, section="train-parts")
    lr_step_epochs: int = _opt(40, "Learning-rate step: multiply by --lr-gamma every this many "
                                   "epochs (paper: 40).", low=1, section="train-parts")
    lr_gamma: float = _opt(0.1, "Learning-rate step factor.", low=0.0, low_open=True, high=1.0,
                           section="train-parts")
    trainable_blocks: int = _opt(-1, "Backbone blocks stages 1 and 3 train; the rest is frozen and "
                                     "its output cached. -1 = all from scratch, 1 when pretrained "
                                     "(stage 3's image classifiers start from the localizer, so "
                                     "they count as pretrained).",
                                 low=-1, section="train-parts")
    batch_classes: int = _opt(8, "Classes per stage-1 batch (P of P x K).", low=2, section="train-parts")
    batch_images: int = _opt(4, "Images per class in a stage-1 batch (K of P x K).", low=2,
                             section="train-parts")
    discriminator_hidden: int = _opt(256, "Hidden units of the shuffle discriminator D; 0 = the "
                                          "paper's linear D (which cannot beat chance).", low=0,
                                     section="train-parts")
    filternet_hidden: int = _opt(0, "FilterNet hidden units; 0 = linear (per-part logit tables "
                                    "in stage 2).", low=0, section="train-parts")
    # -- stage 2: hard-negative generation ---------------------------------------------------
    per_class: int = _opt(150, "Hard negatives to generate per class (paper: 150-200 best).",
                          low=1, section="generate")
    tau: float = _opt(0.5, "Keep a candidate when FilterNet still gives its reference class a "
                           "softmax score >= tau (calibrated with --calibrate: 0.5 = more likely "
                           "class A than all others together; the paper: 0.95, uncalibrated).",
                      low=0.0, high=1.0, low_open=True, high_open=True, section="generate")
    neighbors: int = _opt(16, "Replacement parts per reference part: its K nearest other-class "
                              "parts (FAISS), nearest first.", low=1, section="generate")
    max_part_similarity: float = _opt(0.95, "Skip replacement parts more similar than this (cosine) "
                                            "to the part they replace: near-identical parts make "
                                            "false negatives. 1.0 = the paper (no limit).",
                                      low=-1.0, high=1.0, section="generate")
    donor_classes: int = _opt(5, "Replace part k of a class-A reference only with parts of the "
                                 "classes most like A on the other parts and least like it on part "
                                 "k (class centroids of the part embeddings): near misses, not "
                                 "look-alikes; 0 = every other class (the paper).", low=0,
                              section="generate", before=0)
    band_quantile: float = _opt(0.5, "Replacement band: skip replacement parts more similar to the "
                                     "part they replace than this quantile of the similarities "
                                     "between two of the reference class's own images (inside the "
                                     "class's own spread: false negatives); 1.0 = no band (the "
                                     "paper's nearest-first order).", low=0.0, high=1.0,
                                section="generate", before=1.0)
    neighbour_index: str = _opt("auto", "Part index of the every-class rule (--donor-classes 0): "
                                        "'flat' exact, 'ivf' / 'ivfpq' approximate (their recall "
                                        "against exact search goes to generate.json); 'auto' "
                                        "picks by the number of train images (flat up to 200k, "
                                        "IVF up to 2M, IVF-PQ beyond). Unused with donor classes "
                                        "(exact search over the donors' images).",
                                choices=("auto", "flat", "ivf", "ivfpq"), section="generate",
                                before="auto")
    calibrate: bool = _opt(True, "Fit FilterNet's temperature on val before scoring candidates, so "
                                 "tau is a calibrated probability.", section="generate", before=False)
    # -- stage 3: final classifiers -------------------------------------------------------------
    stage3_epochs: int = _opt(12, "Epochs of the original-image and object classifiers (they start "
                                  "from the localizer's backbone).", low=1, section="train-final")
    stage3_trainable_blocks: int = _opt(-1, "Backbone blocks the original-image and object "
                                            "classifiers train (0 = a linear probe on frozen "
                                            "features); -1 = --trainable-blocks.", low=-1,
                                        section="train-final")
    stage3_lr: float = _opt(0.01, "Initial learning rate of the image classifiers.", low=0.0,
                            low_open=True, section="train-final")
    lambda_image: float = _opt(0.8, "Weight of cls vs triplet in the original and object "
                                    "classifiers (paper: 0.8).", low=0.0, high=1.0, section="train-final")
    lambda_parts: float = _opt(0.75, "Weight of cls vs quadruplet in the parts classifier "
                                     "(Eq. 10, paper: 0.75).", low=0.0, high=1.0, section="train-final")
    quad_m1: float = _opt(0.4, "Quadruplet margin m1 (Eq. 9), > m2.", low=0.0, low_open=True,
                          section="train-final")
    quad_m2: float = _opt(0.2, "Quadruplet margin m2 (Eq. 9), > 0.", low=0.0, low_open=True,
                          section="train-final")
    negatives_per_anchor: int = _opt(1, "Generated hard negatives n+ per anchor in each batch of the "
                                        "parts classifier (Eq. 9 is averaged over them).", low=1,
                                     section="train-final", before=1)
    parts_epochs: int = _opt(60, "Epochs of the parts classifier (on embeddings: cheap).", low=1,
                             section="train-final")
    parts_lr: float = _opt(0.01, "Initial learning rate of the parts classifier (it fine-tunes "
                                 "from the linear probe of the part embeddings).", low=0.0,
                           low_open=True, section="train-final")
    parts_hidden: int = _opt(512, "Hidden units of the parts classifier's projection.", low=1,
                             section="train-final")
    replace_start_p: float = _opt(0.05, "How sure val must be before a fine-tuned epoch replaces "
                                        "the linear probe it started from (LP-FT): the one-sided "
                                        "sign-test p-value of the epoch beating the probe on the "
                                        "val images they disagree on. 1 = any val gain replaces it.",
                                  low=0.0, low_open=True, high=1.0, section="train-final", before=1.0)
    patience: int = _opt(4, "Stage-3 classifiers stop fine-tuning once this many epochs in a row "
                            "have not replaced the weights kept on val (the probe start or a "
                            "better epoch); 0 = every epoch runs.", low=0, section="train-final",
                         before=0)
    parts_keep: str = _opt("better", "When a fine-tuned parts classifier replaces the linear probe "
                                     "it started from: 'better' (beyond chance on val, "
                                     "--replace-start-p) or 'not_worse' (unless the probe is better "
                                     "beyond chance: training that val top-1 cannot see, such as "
                                     "--negative-logits, then reaches the model).",
                           choices=("better", "not_worse"), section="train-final", before="better")
    negative_logits: str = _opt("none", "How generated hard negatives enter the parts classifier's "
                                        "loss beyond the quadruplet: 'not_class' (-log(1 - p) of the "
                                        "class each was made from), 'uniform' (outlier exposure: "
                                        "cross-entropy to the uniform distribution) or 'none'.",
                                choices=("none", "not_class", "uniform"), section="train-final",
                                before="none")
    negative_logits_weight: float = _opt(0.5, "Weight of --negative-logits in the parts "
                                              "classifier's loss.", low=0.0, section="train-final",
                                         before=0.5)
    seed_ensemble: int = _opt(3, "Original-image classifiers in the seed-ensemble control (the main "
                                 "one included); 1 disables the control.", low=1, section="train-final")
    # -- evaluate ----------------------------------------------------------------------------
    fusion_rule: str = _opt("loglinear", "How classifier scores are fused, chosen on val: "
                                         "'loglinear' (product of the softmax scores, one "
                                         "temperature per classifier fitted on val log-loss) or "
                                         "'grid' (paper Eq. 11: weights a, b, c on a grid, best "
                                         "val top-1).", choices=("loglinear", "grid"),
                            section="evaluate", before="grid")
    fusion_step: float = _opt(0.05, "Grid step of the fusion weights (a, b, c) of --fusion-rule grid.", low=0.0,
                              low_open=True, high=0.5, section="evaluate")
    fusion_weights: str | None = _opt(None, "Fixed fusion weights 'a,b,c' (original, object, parts; "
                                            "sum 1), e.g. from 'ghns sweep --space fusion': fuses "
                                            "by Eq. 11 at them, whatever --fusion-rule says; "
                                            "default: chosen on val.", section="evaluate")
    # -- run -------------------------------------------------------------------------------
    run_dir: str = _opt("ghns-run", "Run directory: every stage reads and writes here.")
    device: str = _opt("auto", "Where to compute: 'auto' takes cuda when torch sees a GPU.",
                       choices=("auto", "cpu", "cuda"))
    amp: bool = _opt(True, "Train in bf16 autocast where the hardware computes bf16 natively (a "
                           "CUDA GPU; a CPU with avx512_bf16 or AMX, where the synthetic default's "
                           "epochs ran 1.15-1.3x faster); elsewhere, or with --no-amp, float32. "
                           "Training on stored frozen-trunk outputs (a pretrained backbone's "
                           "localizer and part networks) is always float32.",
                     before=False)
    workers: int = _opt(1, "Ray Train workers (one GPU each with --device cuda).", low=1)
    actors: int = _opt(1, "Ray Data actors for batch inference and candidate scoring.", low=1)
    batch_size: int = _opt(64, "Images per training batch (per worker).", low=2)
    max_failures: int = _opt(1, "Restarts of a training run after a worker failure.", low=0)
    trainer: str = _opt("auto", "Where training loops run: 'ray' (Ray Train workers: several "
                                "workers, GPUs, a cluster), 'local' (this process: one CPU "
                                "worker, no start-up cost), 'auto': local for one CPU worker on "
                                "a Ray this process started (no --ray-address, outside Tune), "
                                "else Ray Train. Results are the same either way.",
                        choices=("auto", "ray", "local"))
    ray_address: str | None = _opt(None, "Ray cluster to join (default: $RAY_ADDRESS, else a "
                                         "local instance).")
    object_store_mb: int = _opt(512, "Object store of a local Ray instance, MiB.", low=64)
    dashboard: bool = _opt(False, "Start the dashboard of a local Ray instance (127.0.0.1 only; Ray's "
                                  "token authentication stays on, as for the whole instance).")
    quiet: bool = _opt(False, "Print warnings and results only: no stage and epoch progress lines.")

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
        if self.quad_m1 <= self.quad_m2:
            raise ConfigError(f"'quad_m1' must be > 'quad_m2' (Eq. 8), got {self.quad_m1} <= {self.quad_m2}")
        if self.trainer == "local" and self.workers > 1:
            raise ConfigError(f"'trainer' local runs one worker, got workers={self.workers}; "
                              "use --trainer ray (or auto) for several")
        if self.fusion_weights is not None:
            self.fusion_weights = _fusion_weights_text(self.fusion_weights)
        if self.root is not None:  # absolute, so workers and later commands elsewhere agree
            self.root = str(Path(self.root).expanduser().resolve())

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def field_info(cls, name: str) -> dataclasses.Field:
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f
        raise KeyError(name)

    @classmethod
    def value_before(cls, name: str) -> Any:
        """What a run saved before option ``name`` existed used: its ``before`` value where it
        has one, else its default."""
        f = cls.field_info(name)
        return f.metadata.get("before", f.default)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with ``overrides`` applied (``None`` values are ignored), validated."""
        values = dataclasses.asdict(self)
        for key, value in overrides.items():
            if value is None:
                continue
            values[_known_key(key, "override")] = value
        return Config(**values)

    # -- 'auto' values, resolved in one place ------------------------------------------------
    def resolved_backbone(self) -> str:
        if self.backbone != "auto":
            return self.backbone
        return "tiny_cnn" if self.dataset == "synthetic" else "efficientnet_lite0"

    def resolved_localize_size(self) -> int:
        if self.localize_image_size:
            return self.localize_image_size
        # the from-scratch localizer of the synthetic set: at 80 px its maps are 10 x 10 and the
        # part boxes still good enough for pure negatives (at 64 px they were not; docs/speed.md)
        return min(self.synthetic_image_size, 80) if self.dataset == "synthetic" else 224

    def resolved_fusion_weights(self) -> tuple[float, float, float] | None:
        if self.fusion_weights is None:
            return None
        a, b, c = (float(v) for v in self.fusion_weights.split(","))
        return a, b, c

    def resolved_weights(self) -> str:
        """The backbone's weights: 'imagenet', 'none' or a state-dict file ('auto' resolved)."""
        from ghns.models.backbones import BACKBONES

        return BACKBONES[self.resolved_backbone()].default_pretrained if self.pretrained == "auto" \
            else self.pretrained

    def resolved_part_size(self) -> int:
        if self.part_image_size:
            return self.part_image_size
        # a pretrained backbone's features are learned at its input scale: a part crop at half of
        # it gives Lite0 a 4 x 4 last map, and on cub50-dev the parts classifier lost 1-2 points
        # (docs/stages/train-parts.md, Part crop size); a from-scratch backbone learns at whatever
        # size it is given
        if self.resolved_weights() != "none":
            return self.resolved_localize_size()
        return max(48, self.resolved_localize_size() // 2)

    def resolved_part_box_scale(self) -> float:
        if self.part_box_scale:
            return self.part_box_scale
        # chosen on the parts classifier's val accuracy (docs/stages/train-parts.md, Part box
        # scale): with a pretrained backbone (224 px part crops) 0.5 beat 0.4 on all three
        # cub50-dev seeds; from scratch (48 px crops) 0.4 beat 0.5 on the synthetic default
        return 0.5 if self.resolved_weights() != "none" else 0.4

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write the resolved config atomically (write to a temp file, then rename)."""
        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path, base: "Config | None" = None,
                  saved_run: bool = False) -> "Config":
        """Read a YAML file whose keys are the flags; keys it leaves out keep ``base``'s values,
        or, for a run's own saved config (``saved_run``), the value an option had before it
        existed (``value_before``)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{where}: not valid YAML") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping of flag: value, got {type(data).__name__}")
        overrides = {_known_key(str(k), str(path)): v for k, v in data.items()}
        if saved_run:
            for f in dataclasses.fields(cls):
                if f.name not in overrides and "before" in f.metadata:
                    overrides[f.name] = f.metadata["before"]
        base = base or cls()
        try:
            return base.replace(**overrides)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


def resolve_config(config_file: str | None = None,
                   overrides: Mapping[str, Any] | None = None, use_run_dir: bool = True) -> Config:
    """defaults < <run_dir>/config.yaml < config_file < overrides (the flags that were given).

    ``use_run_dir=False`` ignores a saved run config (for commands that write no run).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_file = Config.from_yaml(config_file) if config_file is not None else None
    run_dir = overrides.get("run_dir") or (from_file or Config()).run_dir
    cfg = Config()
    saved = Path(run_dir) / "config.yaml"
    if use_run_dir and saved.is_file():
        cfg = Config.from_yaml(saved, saved_run=True)
    if config_file is not None:
        cfg = Config.from_yaml(config_file, base=cfg)
    overrides["run_dir"] = run_dir
    return cfg.replace(**overrides)


# -- validation ------------------------------------------------------------------------------

def _fusion_weights_text(value: Any) -> str:
    """'a,b,c' (or a list of three) -> canonical 'a,b,c'; non-negative, summing to 1."""
    parts = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
    try:
        weights = [float(v) for v in parts]
    except (TypeError, ValueError):
        weights = []
    if len(weights) != 3 or min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
        raise ConfigError(f"'fusion_weights' must be three non-negative numbers summing to 1, "
                          f"as 'a,b,c'; got {value!r}")
    return ",".join(f"{w:g}" for w in weights)


def _known_key(key: str, where: str) -> str:
    name = key.replace("-", "_")
    keys = Config.keys()
    if name not in keys:
        close = difflib.get_close_matches(name, keys, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown key '{key}' in {where}{hint}")
    return name


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the scalar type of a field, whether None is allowed)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**vars(typing), "float": float, "int": int, "str": str,
                                       "bool": bool})
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return annotation, False


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    typ, optional = _base_type(f.type)
    meta = f.metadata
    if value is None:
        if optional:
            return None
        raise ConfigError(f"'{f.name}' must be set")
    out: Any
    if typ is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            out = value.lower() in ("true", "yes", "1")
        else:
            raise ConfigError(f"'{f.name}' must be true or false, got {value!r}")
    elif typ is int:
        if isinstance(value, bool) or not _is_integral(value):
            raise ConfigError(f"'{f.name}' must be an integer, got {value!r}")
        out = int(value)
    elif typ is float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"'{f.name}' must be a number, got {value!r}") from None
        if isinstance(value, bool) or not math.isfinite(out):
            raise ConfigError(f"'{f.name}' must be a finite number, got {value!r}")
    elif typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"'{f.name}' must be a string, got {value!r}")
        out = str(value)
    else:  # pragma: no cover - a field type this module does not know is a programming error
        raise TypeError(f"unsupported config type {typ} for {f.name}")

    choices = meta.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"'{f.name}' must be one of {', '.join(choices)}; got {out!r}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (out <= low if meta.get("low_open") else out < low):
        raise ConfigError(f"'{f.name}' must be {'>' if meta.get('low_open') else '>='} {low}, got {out}")
    if high is not None and (out >= high if meta.get("high_open") else out > high):
        raise ConfigError(f"'{f.name}' must be {'<' if meta.get('high_open') else '<='} {high}, got {out}")
    return out


def _is_integral(value: Any) -> bool:
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, str):
        try:
            int(value)
            return True
        except ValueError:
            return False
    return False
