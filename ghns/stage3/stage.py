"""The train-final stage: every stage-3 model through Ray Train, each skipped when its file
exists (an interrupted stage resumes model by model, and a model's run resumes from its last
checkpoint).

Models (``<run_dir>/train-final/``): ``original.pt``, ``object.pt``, ``parts.pt`` (with generated hard
negatives), ``parts_noneg.pt`` (the same without the n+ term, for ``fused_without_negatives``) and
``original_seed{1..}.pt`` (extra original-image classifiers with other seeds: the seed-ensemble
control, which separates the gain of the method from the gain of fusing several networks).
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import TYPE_CHECKING, Any

from ghns.data.catalog import Catalog
from ghns.rundir import RunDir, atomic_write_text
from ghns.stages import stage_runner
from ghns.train.specs import ImageClassifierSpec, PartsClassifierSpec

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)


ENSEMBLE = "original_seed"  # original_seed1, 2, ...: the seed-ensemble control's extra members


def model_names(cfg: Config) -> list[str]:
    return ["original", "object", "parts", "parts_noneg"] + [
        f"{ENSEMBLE}{s}" for s in range(1, cfg.seed_ensemble)]


def ensemble_member(name: str) -> int:
    """The seed offset of a stage-3 original-image classifier (0 for ``original``, ``object``)."""
    return int(name[len(ENSEMBLE):]) if name.startswith(ENSEMBLE) else 0


@stage_runner("train-final")
def run_stage3(cfg: Config, run: RunDir, fp: dict[str, Any], force: bool) -> dict[str, Any]:
    """Stage 3 (``ghns train-final``); returns the figures of train-final.json."""
    if force:
        shutil.rmtree(run.train_final, ignore_errors=True)
        for name in model_names(cfg):
            shutil.rmtree(run.path / "ray" / f"train-final_{name}", ignore_errors=True)
    catalog = Catalog.read(run.catalog)
    figures: dict[str, Any] = {"models": {}}
    with run.stage("train-final", fp, force) as record:
        for name in model_names(cfg):
            figures["models"][name] = train_model(cfg, run, catalog, name)
        shutil.rmtree(run.train_final / "cache", ignore_errors=True)  # frozen-trunk outputs, shared while training
        record["figures"] = {k: v.get("val_accuracy") for k, v in figures["models"].items()}
        atomic_write_text(run.train_final_json, json.dumps(figures, indent=2))
    return figures


def train_model(cfg: Config, run: RunDir, catalog: Catalog, name: str) -> dict[str, Any]:
    from ghns.stage3.train import image_classifier_loop, parts_classifier_loop
    from ghns.train.runner import fit

    out = run.train_final / f"{name}.pt"
    history_file = run.train_final / f"{name}.history.json"
    if out.is_file() and history_file.is_file():
        log.info("train-final: %s done already", name)
    else:
        spec: ImageClassifierSpec | PartsClassifierSpec
        if name.startswith("parts"):
            spec = PartsClassifierSpec.from_config(cfg, run, len(catalog.classes),
                                                   use_negatives=name == "parts", output=out)
            fit(parts_classifier_loop, spec, cfg, name=f"train-final_{name}", history_file=history_file,
                epochs=spec.parts.parts_epochs)
        else:
            seed = cfg.seed + ensemble_member(name)
            spec = ImageClassifierSpec.from_config(cfg, run, len(catalog.classes),
                                                   crop="object" if name == "object" else "whole",
                                                   seed=seed, output=out)
            fit(image_classifier_loop, spec, cfg, name=f"train-final_{name}", history_file=history_file,
                epochs=spec.optim.epochs)
    from ghns.checkpoint import load_checkpoint

    history = json.loads(history_file.read_text())
    saved = load_checkpoint(out)["settings"]  # what KeepBest kept (epoch -1: the probe, LP-FT)
    acc = saved.get("val_accuracy", float("nan"))
    return {"val_accuracy": round(acc, 2) if acc == acc and abs(acc) != float("inf") else None,
            "epoch_kept": saved.get("epoch_kept"), "epochs": len(history),
            "seconds": round(sum(h.get("epoch_seconds", 0.0) for h in history), 1)}
