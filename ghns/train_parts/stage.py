"""The stage-1 stage: train the part networks (Ray Train), embed every (image, part) (from the run's
part-crop trunk outputs when the frozen blocks are pretrained, else a Ray Data pass), train
FilterNet, write ``train-parts/`` and ``embeddings.parquet``, report ``train-parts.json``."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ghns.checkpoint import save_checkpoint
from ghns.data.catalog import Catalog
from ghns.errors import StageError
from ghns.models import N_PARTS
from ghns.rundir import RunDir, atomic_write_text, stage_runner
from ghns.train_parts.embed import BOX_COLUMNS, EmbedActor
from ghns.train_parts.filternet import train_filternet
from ghns.train_parts.table import read_embeddings, write_embeddings
from ghns.train_parts.train import train_parts_loop
from ghns.train.specs import PartNetworksSpec

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)


@stage_runner("train-parts")
def run_train_parts(cfg: Config, run: RunDir, fp: dict[str, Any], force: bool) -> dict[str, Any]:
    """Stage 1 (``ghns train-parts``); returns the figures of train-parts.json."""
    catalog = Catalog.read(run.catalog)
    with run.stage("train-parts", fp, force) as record:
        history = _train_parts(cfg, run, catalog, force)
        meta, emb = _embed(cfg, run, catalog)
        write_embeddings(run.embeddings, meta, emb)
        figures = _filternet(cfg, run, meta, emb, len(catalog.classes))
        last = history[-1] if history else {}
        figures.update({
            "backbone": cfg.resolved_backbone(), "part_image_size": cfg.resolved_part_size(),
            "loss_weights": {"alpha": cfg.alpha, "beta": cfg.beta, "gamma": cfg.gamma},
            "val_accuracy_parts": {f"part{k}": round(last[f"val_acc_part{k}"], 2) for k in (1, 2, 3)
                                   if f"val_acc_part{k}" in last},
            "val_accuracy_parts_vote": round(last.get("val_acc_parts_vote", float("nan")), 2),
            "epochs": len(history),
            "seconds_per_epoch": round(float(np.median([h["epoch_seconds"] for h in history])), 2)
            if history else None,
            "cache_seconds": round(last.get("cache_seconds", 0.0), 1),
            "discriminator_train_accuracy": round(100 * last.get("adv_accuracy", float("nan")), 1),
        })
        record["figures"] = {"filternet_val_accuracy": figures["filternet"]["val_accuracy"]}
        atomic_write_text(run.train_parts_json, json.dumps(figures, indent=2))
    log.info("train-parts: FilterNet val accuracy %.2f%%, part networks %s",
             figures["filternet"]["val_accuracy"], figures["val_accuracy_parts"])
    return figures


def _train_parts(cfg: Config, run: RunDir, catalog: Catalog, force: bool) -> list[dict]:
    from ghns.train.runner import fit

    storage = run.path / "ray" / "train-parts"
    history_file = run.train_parts / "history.json"
    if force:
        shutil.rmtree(storage, ignore_errors=True)
        history_file.unlink(missing_ok=True)
    # every split in one fill (one actor pool's start-up): the embedding pass reads test too
    spec = with_part_trunks(cfg, run, catalog, PartNetworksSpec.from_config(cfg, run, len(catalog.classes)),
                            ("train", "val", "test"))
    fit(train_parts_loop, spec, cfg, name="train-parts", history_file=history_file, epochs=spec.optim.epochs)
    return json.loads(history_file.read_text()) if history_file.is_file() else []


def with_part_trunks(cfg: Config, run: RunDir, catalog: Catalog, spec: PartNetworksSpec,
                     splits: tuple[str, ...]) -> PartNetworksSpec:
    """``spec`` reading the run's part-crop trunk outputs for ``splits`` (filled here where
    missing) when its frozen blocks are pretrained (``ghns.train_parts.part_trunks``); else ``spec``."""
    from ghns.train_parts.part_trunks import ensure_part_trunks, stores_part_trunks
    from ghns.models.parts import build_parts

    model = build_parts(spec.settings())
    if not stores_part_trunks(model, spec.model.backbone, spec.model.pretrained):
        return spec
    return replace(spec, trunks=str(ensure_part_trunks(cfg, run, catalog, model, spec.settings(), splits)))


def _embed(cfg: Config, run: RunDir, catalog: Catalog) -> tuple[pd.DataFrame, np.ndarray]:
    """Every catalogued image's part embeddings: from the run's part-crop trunk outputs (only the
    blocks after the frozen ones run) when stage 1 trained on them, else a Ray Data pass."""
    from ghns.checkpoint import load_model
    from ghns.raykit import map_batches_pandas, resolve_device, torch_threads_for
    from ghns.train_parts.part_trunks import embed_from_trunks, read_part_trunks

    spec = with_part_trunks(cfg, run, catalog, PartNetworksSpec.from_config(cfg, run, len(catalog.classes)),
                            ("train", "val", "test"))
    if spec.trunks:
        model, _ = load_model(run.part_networks, "part_networks")
        rows = catalog.table[["image_id", "split", "label"]].reset_index(drop=True)
        emb = np.zeros((len(rows), N_PARTS, spec.embedding_dim), dtype=np.float32)
        for split in ("train", "val", "test"):
            where = np.nonzero((rows["split"] == split).to_numpy())[0]
            x = read_part_trunks(spec.trunks, split, rows["image_id"].to_numpy()[where], model)
            emb[where] = embed_from_trunks(model, x)
        return rows, emb
    loc = pd.read_parquet(run.localization)
    rows = catalog.table[["image_id", "path", "split", "label"]].merge(
        loc[["image_id"] + BOX_COLUMNS], on="image_id", how="left")
    out = map_batches_pandas(rows, EmbedActor,
                             {"model_path": str(run.part_networks.resolve()),
                              "device": resolve_device(cfg), "threads": torch_threads_for(cfg.actors)},
                             cfg, actors=cfg.actors, batch_size=cfg.batch_size)
    failed = int(out["image_failed"].sum())
    if failed:
        raise StageError(f"train-parts: {failed} images could not be read while embedding")
    emb = np.stack([np.stack(out[f"part{k}"].to_numpy()) for k in (1, 2, 3)], axis=1)
    return out[["image_id", "split", "label"]], emb.astype(np.float32)


def _filternet(cfg: Config, run: RunDir, meta: pd.DataFrame, emb: np.ndarray, num_classes: int) -> dict:
    train = (meta["split"] == "train").to_numpy()
    val = (meta["split"] == "val").to_numpy()
    labels = meta["label"].to_numpy()
    net, figures = train_filternet(emb[train], labels[train], emb[val], labels[val], num_classes,
                                   hidden=cfg.filternet_hidden, seed=cfg.seed)
    save_checkpoint(run.filternet, net, {"hidden": cfg.filternet_hidden, "n_parts": emb.shape[1],
                                         "embedding_dim": emb.shape[2], "num_classes": num_classes})
    return {"filternet": figures}


def load_filternet(run: RunDir):
    return load_filternet_file(run.filternet)


def load_filternet_file(path):
    from ghns.checkpoint import load_model

    return load_model(path, "filternet")[0]


def load_embeddings(run: RunDir):
    if not run.embeddings.is_file():
        raise StageError(f"{run.embeddings} is missing: run 'ghns train-parts' first")
    return read_embeddings(run.embeddings)
