"""The train-final stage: every stage-3 model through Ray Train, each skipped when its file
exists (an interrupted stage resumes model by model, and a model's run resumes from its last
checkpoint).

Models (``<run_dir>/stage3/``): ``original.pt``, ``object.pt``, ``parts.pt`` (with generated hard
negatives), ``parts_noneg.pt`` (the same without the n+ term, for ``fused_without_negatives``) and
``original_seed{1..}.pt`` (extra original-image classifiers with other seeds: the seed-ensemble
control, which separates the gain of the method from the gain of fusing several networks).
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any


from ghns.data.catalog import Catalog
from ghns.errors import StageError
from ghns.localize.train import frozen_blocks_for
from ghns.rundir import RunDir, atomic_write_text, fingerprint

log = logging.getLogger(__name__)


def model_names(cfg) -> list[str]:
    return ["original", "object", "parts", "parts_noneg"] + [
        f"original_seed{s}" for s in range(1, cfg.seed_ensemble)]


def run_stage3(cfg, force: bool = False) -> dict[str, Any]:
    run = RunDir(cfg.run_dir)
    if not run.generate_json.is_file():
        raise StageError(f"{run.generate_json} is missing: run 'ghns generate' first")
    fp = fingerprint(cfg, "stage3")
    if run.stage3_json.is_file() and run.is_done("stage3", fp, force):
        log.info("train-final: done already (%s)", run.stage3_json)
        return json.loads(run.stage3_json.read_text())
    force = run.starts_over("stage3", force)
    run.check_partial("stage3", fp, force)  # before anything is removed
    if force:
        shutil.rmtree(run.stage3, ignore_errors=True)
        for name in model_names(cfg):
            shutil.rmtree(run.path / "ray" / f"stage3_{name}", ignore_errors=True)
    catalog = Catalog.read(run.catalog)
    figures: dict[str, Any] = {"models": {}}
    with run.stage("stage3", fp, force) as record:
        for name in model_names(cfg):
            figures["models"][name] = _train(cfg, run, catalog, name)
        shutil.rmtree(run.stage3 / "cache", ignore_errors=True)  # frozen-trunk outputs, shared while training
        record["figures"] = {k: v.get("val_accuracy") for k, v in figures["models"].items()}
        atomic_write_text(run.stage3_json, json.dumps(figures, indent=2))
    return figures


def parts_settings(cfg) -> dict[str, Any]:
    """The parts classifier's settings, under their Config names (``PartsSettings``)."""
    from ghns.stage3.parts import PartsSettings

    return {k: getattr(cfg, k) for k in PartsSettings.__dataclass_fields__}


def _train(cfg, run: RunDir, catalog: Catalog, name: str) -> dict[str, Any]:
    from ghns.raykit import torch_threads_for
    from ghns.stage3.train import image_classifier_loop, parts_classifier_loop
    from ghns.train.runner import fit

    out = run.stage3 / f"{name}.pt"
    history_file = run.stage3 / f"{name}.history.json"
    if out.is_file() and history_file.is_file():
        log.info("train-final: %s done already", name)
    else:
        common = {"num_classes": len(catalog.classes), "output": str(out.resolve()),
                  "history_file": str(history_file.resolve()), "optimizer": cfg.optimizer,
                  "weight_decay": cfg.weight_decay, "lr_step": cfg.lr_step_epochs,
                  "lr_gamma": cfg.lr_gamma, "batch_classes": cfg.batch_classes,
                  "batch_images": cfg.batch_images, "replace_start_p": cfg.replace_start_p,
                  "torch_threads": torch_threads_for(cfg.workers)}
        if name.startswith("parts"):
            loop = parts_classifier_loop
            config = {**common, **parts_settings(cfg), "embeddings": str(run.embeddings.resolve()),
                      "negatives": str(run.negatives.resolve()), "use_negatives": name == "parts",
                      "epochs": cfg.parts_epochs, "seed": cfg.seed}
        else:
            backbone = cfg.resolved_backbone()
            seed = cfg.seed + (int(name.split("seed")[1]) if "seed" in name else 0)
            localizer = run.path / "localize" / "model.pt"
            # a pretrained backbone starts from its own weights (the features its linear probe,
            # the bar, sees); one without weights from the localizer, already a whole-image
            # classifier of this train split. Either way only the last block trains by default
            # and the rest is cached once.
            from ghns.models.backbones import BACKBONES

            weights = BACKBONES[backbone].default_pretrained if cfg.pretrained == "auto" else cfg.pretrained
            init_from = str(localizer.resolve()) if weights == "none" and localizer.is_file() else None
            config = {**common, "catalog": str(run.catalog.resolve()),
                      "localization": str(run.localization.resolve()),
                      "crop": "object" if name == "object" else "whole",
                      "image_size": cfg.resolved_localize_size(), "backbone": backbone,
                      "pretrained": weights, "init_from": init_from,
                      "frozen_blocks": frozen_blocks_for(
                          backbone, "localizer" if init_from else weights,
                          cfg.stage3_trainable_blocks if cfg.stage3_trainable_blocks >= 0
                          else cfg.trainable_blocks, pretrained_default=1),
                      "trunk_cache": str((run.stage3 / "cache").resolve()),
                      "lam": cfg.lambda_image,
                      "margin": cfg.triplet_margin, "mining": cfg.triplet_mining,
                      "epochs": cfg.stage3_epochs, "lr": cfg.stage3_lr, "seed": seed}
            loop = image_classifier_loop
        fit(loop, config, cfg, name=f"stage3_{name}")
    from ghns.checkpoint import load_checkpoint

    history = json.loads(history_file.read_text())
    saved = load_checkpoint(out)["settings"]  # what KeepBest kept (epoch -1: the probe, LP-FT)
    acc = saved.get("val_accuracy", float("nan"))
    return {"val_accuracy": round(acc, 2) if acc == acc and abs(acc) != float("inf") else None,
            "epoch_kept": saved.get("epoch_kept"), "epochs": len(history),
            "seconds": round(sum(h.get("epoch_seconds", 0.0) for h in history), 1)}
