"""The train-final stage: every stage-3 model, one after another in one training run
(``fit_all``: one Ray Train worker group, or this process), each skipped when its file exists (an
interrupted stage resumes model by model, and the model it was in resumes from its last
checkpoint). The image classifiers read the run's frozen-trunk outputs (``ghns.trunks``), made
here before training where the localizer has not made them.

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
from ghns.rundir import RunDir, atomic_write_text, stage_runner
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
def run_train_final(cfg: Config, run: RunDir, fp: dict[str, Any], force: bool) -> dict[str, Any]:
    """Stage 3 (``ghns train-final``); returns the figures of train-final.json."""
    if force:
        shutil.rmtree(run.train_final, ignore_errors=True)
        for name in ["", *(f"_{n}" for n in model_names(cfg))]:
            shutil.rmtree(run.path / "ray" / f"train-final{name}", ignore_errors=True)
    catalog = Catalog.read(run.catalog)
    figures: dict[str, Any] = {"models": {}}
    with run.stage("train-final", fp, force) as record:
        train_models(cfg, run, catalog, model_names(cfg))
        for name in model_names(cfg):
            figures["models"][name] = model_figures(run, name)
        record["figures"] = {k: v.get("val_accuracy") for k, v in figures["models"].items()}
        atomic_write_text(run.train_final_json, json.dumps(figures, indent=2))
    return figures


def with_trunks(cfg: Config, run: RunDir, catalog: Catalog, spec: ImageClassifierSpec,
                model=None) -> ImageClassifierSpec:
    """``spec`` reading the run's frozen-trunk outputs of its crop (``ghns.trunks``: made here
    for every split where missing, so evaluate and the seed-ensemble copies read them too)."""
    from dataclasses import replace

    from ghns.train_final.train import start_model
    from ghns.trunks import ensure_trunks

    if spec.model.frozen_blocks == 0:  # every block trains: no frozen outputs to share
        return spec
    model = model if model is not None else start_model(spec)  # (the start, if the caller built it)
    folder = ensure_trunks(cfg, run, catalog, model, spec.model.to_dict(), spec.crop)
    return replace(spec, trunks=str(folder.resolve()))


def train_models(cfg: Config, run: RunDir, catalog: Catalog, names: list[str]) -> None:
    """Train the stage-3 models ``names`` that are not done yet (their file and history exist),
    one after another in one training run (``fit_all``: one Ray Train start-up for all)."""
    from ghns.train.runner import FitJob, fit_all

    jobs = []
    for name in names:
        out, history_file = run.train_final / f"{name}.pt", run.train_final / f"{name}.history.json"
        if out.is_file() and history_file.is_file():
            log.info("train-final: %s done already", name)
            continue
        out.unlink(missing_ok=True)  # a model without its history is redone
        loop, spec, epochs = _loop_and_spec(cfg, run, catalog, name, out)
        jobs.append(FitJob(loop, spec, f"train-final_{name}", history_file, out, epochs))
    if jobs:
        fit_all(jobs, cfg, name="train-final")


def _loop_and_spec(cfg: Config, run: RunDir, catalog: Catalog, name: str, out):
    from ghns.train_final.train import image_classifier_loop, parts_classifier_loop

    if name.startswith("parts"):
        spec = PartsClassifierSpec.from_config(cfg, run, len(catalog.classes),
                                               use_negatives=name == "parts", output=out)
        return parts_classifier_loop, spec, spec.parts.parts_epochs
    image = ImageClassifierSpec.from_config(cfg, run, len(catalog.classes),
                                            crop="object" if name == "object" else "whole",
                                            seed=cfg.seed + ensemble_member(name), output=out)
    return image_classifier_loop, with_trunks(cfg, run, catalog, image), image.optim.epochs


def train_model(cfg: Config, run: RunDir, catalog: Catalog, name: str) -> dict[str, Any]:
    """One stage-3 model (trained unless done) and its figures."""
    train_models(cfg, run, catalog, [name])
    return model_figures(run, name)


def model_figures(run: RunDir, name: str) -> dict[str, Any]:
    """A trained stage-3 model's figures for ``train-final.json``."""
    from ghns.checkpoint import load_checkpoint

    history = json.loads((run.train_final / f"{name}.history.json").read_text())
    saved = load_checkpoint(run.train_final / f"{name}.pt")["settings"]  # what KeepBest kept (epoch -1: the probe)
    acc = saved.get("val_accuracy", float("nan"))
    return {"val_accuracy": round(acc, 2) if acc == acc and abs(acc) != float("inf") else None,
            "epoch_kept": saved.get("epoch_kept"), "epochs": len(history),
            "seconds": round(sum(h.get("epoch_seconds", 0.0) for h in history), 1)}
