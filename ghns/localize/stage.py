"""The localize stage: train the localizer, box every image, measure, write the run directory.

Outputs: ``localization.parquet`` (per image: object box ``obj_*``, the CAM box ``cam_*`` and
foreground box ``fg_*`` it was chosen from, part centres and part boxes ``part{k}_*``, flags) and
``localization.json`` (quality against ground truth where the dataset has it, counts, settings).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ghns.data.catalog import Catalog
from ghns.errors import ConfigError
from ghns.localize import metrics, oracle
from ghns.localize.boxes import box_around
from ghns.localize.infer import LocalizeActor, boxes_from_trunks, columns
from ghns.localize.train import localizer_loop
from ghns.models import N_PARTS
from ghns.rundir import RunDir, atomic_path, atomic_write_text, stage_runner
from ghns.train.specs import LocalizerSpec

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)


@stage_runner("localize")
def run_localize(cfg: Config, run: RunDir, fp: dict[str, Any], force: bool) -> dict[str, Any]:
    """The localize stage; returns the figures of localization.json."""
    catalog = Catalog.read(run.catalog)
    table = catalog.table
    true_objects, true_parts = oracle.object_boxes(table), oracle.part_boxes(table)
    if cfg.object_method == "oracle" and true_objects is None:
        raise ConfigError(f"object_method 'oracle' needs object boxes; dataset {catalog.dataset!r} has none")
    if cfg.part_method == "oracle" and true_parts is None:
        raise ConfigError(f"part_method 'oracle' needs part annotations; dataset {catalog.dataset!r} "
                          f"has none (CUB parts/part_locs.txt or the synthetic set)")

    with run.stage("localize", fp, force) as record:
        out = table[["image_id", "split", "label"]].copy()
        history: list[dict] = []
        if cfg.object_method != "oracle" or cfg.part_method != "oracle":
            found, history = _learned_boxes(cfg, run, catalog, force)
            out = out.merge(found.drop(columns=["split", "label"]), on="image_id", how="left")
        _choose_boxes(cfg, out, true_objects, true_parts)
        figures = _measure(cfg, out, true_objects, true_parts, history)
        record["figures"] = {k: figures[k] for k in ("object_iou50", "part_center_hit") if k in figures}
        _write_parquet(out, run.localization)
        atomic_write_text(run.localization_json, json.dumps(figures, indent=2))
    _log_summary(figures)
    return figures


def _learned_boxes(cfg: Config, run: RunDir, catalog: Catalog, force: bool) -> tuple[pd.DataFrame, list]:
    from ghns.raykit import map_batches_pandas, resolve_device, torch_threads_for
    from ghns.train.runner import fit

    model_path = run.path / "localize" / "model.pt"
    storage = run.path / "ray" / "localize"
    history_file = run.path / "localize" / "history.json"
    if force:  # a forced stage starts over instead of resuming the last run's checkpoints
        shutil.rmtree(storage, ignore_errors=True)
        history_file.unlink(missing_ok=True)
    spec = shared_trunks(cfg, run, catalog, LocalizerSpec.from_config(cfg, run, len(catalog.classes)))
    result = fit(localizer_loop, spec, cfg, name="localize", history_file=history_file,
                 epochs=spec.optim.epochs)
    if spec.trunks:
        found = boxes_from_trunks(str(model_path.resolve()), spec.trunks, catalog, spec.trunk_blocks,
                                  cfg.cam_threshold, cfg.foreground_threshold)
        return found, result.history
    device = resolve_device(cfg)
    found = map_batches_pandas(
        catalog.table[["image_id", "path", "label", "split"]], LocalizeActor,
        {"model_path": str(model_path.resolve()), "cam_threshold": cfg.cam_threshold,
         "foreground_threshold": cfg.foreground_threshold, "device": device,
         "threads": torch_threads_for(cfg.actors)},
        cfg, actors=cfg.actors, batch_size=cfg.batch_size)
    failed = int(found["image_failed"].sum())
    if failed:
        log.warning("localize: %d images could not be decoded; they get whole-image boxes", failed)
    return found.drop(columns=["path"]), result.history


def shared_trunks(cfg: Config, run: RunDir, catalog: Catalog, spec: LocalizerSpec) -> LocalizerSpec:
    """``spec`` reading the original-image classifier's frozen-trunk outputs (``ghns.trunks``,
    made here for every split) where the localizer's frozen blocks start with the classifier's
    (a pretrained backbone at the classifiers' input size: the usual case on real images), so the
    whole images go through those blocks once per run, not once per stage; else ``spec``."""
    from dataclasses import replace

    from ghns.models.localizer import build_localizer
    from ghns.models.classifiers import weights_digest
    from ghns.train_final.stage import with_trunks
    from ghns.train.specs import ImageClassifierSpec

    stage3 = ImageClassifierSpec.from_config(cfg, run, len(catalog.classes), crop="whole", seed=cfg.seed,
                                             output=run.train_final / "original.pt")
    first = stage3.model.frozen_blocks
    if (stage3.init_from or not 0 < first <= spec.model.frozen_blocks
            or stage3.model.backbone != spec.model.backbone
            or stage3.model.image_size != spec.model.image_size):
        return spec
    from ghns.train_final.train import start_model

    start = start_model(stage3)
    if weights_digest(build_localizer(spec.model.to_dict()).backbone.blocks[:first]) != start.trunk_digest():
        return spec
    stage3 = with_trunks(cfg, run, catalog, stage3, start)
    return replace(spec, trunks=stage3.trunks, trunk_blocks=first)


def _choose_boxes(cfg: Config, out: pd.DataFrame, true_objects, true_parts) -> None:
    """Fill ``obj_*`` (from the object method) and ``part{k}_*`` boxes in place."""
    if cfg.object_method == "oracle":
        obj = np.asarray(true_objects, dtype=float)
    else:
        obj = out[columns("cam" if cfg.object_method == "cam" else "fg")].to_numpy(dtype=float)
    for name, values in zip(columns("obj"), obj.T):
        out[name] = values
    if cfg.part_method == "oracle":
        boxes = np.asarray(true_parts, dtype=float)  # (N, 3, 4)
        for k in range(N_PARTS):
            for j, name in enumerate(columns(f"part{k + 1}")):
                out[name] = boxes[:, k, j]
            out[f"part{k + 1}_cx"] = boxes[:, k, 0] + boxes[:, k, 2] / 2
            out[f"part{k + 1}_cy"] = boxes[:, k, 1] + boxes[:, k, 3] / 2
        return
    sides = cfg.resolved_part_box_scale() * np.maximum(obj[:, 2], obj[:, 3])
    sizes = _image_sizes(out)
    for k in range(N_PARTS):
        around = [box_around((cx, cy), side, size) for cx, cy, side, size in
                  zip(out[f"part{k + 1}_cx"], out[f"part{k + 1}_cy"], sides, sizes)]
        for j, name in enumerate(columns(f"part{k + 1}")):
            out[name] = [b[j] for b in around]


def _image_sizes(out: pd.DataFrame) -> list[tuple[float, float]]:
    """(H, W) per image, from the localizer's records of each image's size."""
    return list(zip(out["image_h"].to_numpy(dtype=float), out["image_w"].to_numpy(dtype=float)))


def _measure(cfg: Config, out: pd.DataFrame, true_objects, true_parts, history) -> dict[str, Any]:
    splits = ("train", "val", "test")
    figures: dict[str, Any] = {"object_method": cfg.object_method, "part_method": cfg.part_method,
                               "backbone": cfg.resolved_backbone(),
                               "image_size": cfg.resolved_localize_size(), "images": len(out)}
    if cfg.part_method == "learned":
        figures["part_box_scale"] = cfg.resolved_part_box_scale()
    if "cam_degenerate" in out:
        figures["degenerate_maps"] = {"cam": int(out["cam_degenerate"].sum()),
                                      "foreground": int(out["fg_degenerate"].sum())}
    if history:
        last = history[-1]
        figures["localizer_val_accuracy"] = {"cam_head": last.get("val_acc_cam"),
                                             "part_head": last.get("val_acc_parts")}
    if true_objects is not None:
        truth = np.asarray(true_objects, dtype=float)
        for key, cols in (("object_iou50", columns("obj")), ("object_iou50_cam", columns("cam")),
                          ("object_iou50_parts", columns("fg"))):
            if cols[0] not in out:
                continue
            pred = out[cols].to_numpy(dtype=float)
            figures[key] = {s: _round(metrics.object_iou50(
                [tuple(p) for p in pred[mask]], [tuple(t) for t in truth[mask]]))
                for s in splits for mask in [(out["split"] == s).to_numpy()] if mask.any()}
    if true_parts is not None:
        centres = np.stack([out[[f"part{k + 1}_cx", f"part{k + 1}_cy"]].to_numpy(dtype=float)
                            for k in range(N_PARTS)], axis=1)  # (N, 3, 2)
        train = (out["split"] == "train").to_numpy()
        hits = metrics.hit_matrix(centres[train], [true_parts[i] for i in np.nonzero(train)[0]])
        assignment = metrics.fit_assignment(hits)
        figures["part_assignment"] = {name: f"part{assignment[j] + 1}"
                                      for j, name in enumerate(oracle.PART_NAMES)}
        figures["part_center_hit"] = {}
        for s in splits:
            mask = (out["split"] == s).to_numpy()
            if mask.any():
                hit = metrics.part_center_hit(centres[mask], [true_parts[i] for i in np.nonzero(mask)[0]],
                                              assignment)
                figures["part_center_hit"][s] = dict(zip(oracle.PART_NAMES, map(_round, hit)))
    return figures


def _round(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def _write_parquet(out: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        out.to_parquet(tmp, index=False)


def _log_summary(figures: dict[str, Any]) -> None:
    if "object_iou50" in figures:
        log.info("localize: object_iou50 %s", figures["object_iou50"])
    if "part_center_hit" in figures:
        log.info("localize: part_center_hit (test) %s", figures["part_center_hit"].get("test"))
