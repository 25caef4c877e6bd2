"""The generate stage: Ray Data streams class ids through a pool of FilterNet actors, each class
fills its budget and writes its shard; a summary says what filled and what did not, and why.

Only the train split provides references and replacement parts (val and test never leak into
stage 3's training data). Resumption: shards that exist are skipped, so an interrupted run
continues where it stopped; ``negatives/settings.json`` records the settings of the shards, and a
resumed run with other settings is refused (``--force`` starts over).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ghns.data.catalog import Catalog
from ghns.errors import StageError
from ghns.rundir import RunDir, atomic_write_text, stage_runner
from ghns.generate.bank import shard_path, shard_stats

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)


GENERATOR_KEYS = ("per_class", "tau", "neighbors", "max_part_similarity", "donor_classes",
                  "band_quantile", "calibrate", "neighbour_index")


def generator_settings(cfg: Config, **overrides: Any) -> dict[str, Any]:
    """The settings a bank depends on (besides stage 1's outputs), under their Config names."""
    return {**{k: getattr(cfg, k) for k in GENERATOR_KEYS}, **overrides}


@stage_runner("generate")
def run_generate(cfg: Config, run: RunDir, fp: dict[str, Any], force: bool) -> dict[str, Any]:
    """Stage 2 (``ghns generate``); returns the figures of generate.json."""
    catalog = Catalog.read(run.catalog)
    settings = generator_settings(cfg)
    prepare_bank(run, run.negatives, settings, force)
    with run.stage("generate", fp, force) as record:
        start = time.perf_counter()
        stats, temperature, lookup = write_bank(cfg, run, run.negatives, settings)
        figures = summarize(stats, catalog.classes, cfg.per_class)
        figures["lookup"] = lookup
        figures.update(bank_figures(run, catalog, run.negatives, cfg.per_class))
        figures.update({"settings": settings, "filternet_temperature": temperature,
                        "actors": cfg.actors, "seconds": round(time.perf_counter() - start, 2)})
        record["figures"] = {k: figures[k] for k in ("kept", "candidates", "classes_short")}
        atomic_write_text(run.generate_json, json.dumps(figures, indent=2))
    return figures


def prepare_bank(run: RunDir, folder: Path, settings: dict[str, Any], force: bool = False) -> None:
    """Make ``folder`` ready for ``settings``: kept as it is when it holds (part of) a bank of the
    same settings and stage-1 outputs (the run resumes), emptied when forced or when stage 1
    changed, refused when it holds an interrupted bank of other settings."""
    inputs = _inputs_digest(run)
    settings_file = folder / "settings.json"
    previous = json.loads(settings_file.read_text()) if settings_file.is_file() else None
    if previous is not None:
        previous["settings"] = {k: previous["settings"].get(k, _before(k)) for k in settings}
    if force or (previous is not None and previous.get("inputs") != inputs):
        if previous is not None and not force:
            log.info("generate: stage 1 changed since %s was written; starting over", folder)
        shutil.rmtree(folder, ignore_errors=True)
    elif previous is not None and previous.get("settings") != settings:
        raise StageError(f"{folder} holds an interrupted run with other settings "
                         f"({previous.get('settings')}); pass --force to start over")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(settings_file, json.dumps({"settings": settings, "inputs": inputs}))


def _before(key: str) -> Any:
    from ghns.config import Config

    return Config.value_before(key)


def write_bank(cfg: Config, run: RunDir, folder: Path, settings: dict[str, Any]) -> tuple[list[dict], float, dict]:
    """Fill every class's shard in ``folder`` that is not there yet (Ray Data, FilterNet actors);
    returns every class's statistics, the FilterNet temperature used and what the part lookup
    was (``prepare_store``)."""
    catalog = Catalog.read(run.catalog)
    classes = list(range(len(catalog.classes)))
    done = [c for c in classes if shard_path(folder, c).is_file()]
    todo = [c for c in classes if c not in set(done)]
    if done:
        log.info("generate: resuming, %d of %d classes already done", len(done), len(classes))
    temperature = filternet_temperature(run) if settings["calibrate"] else 1.0
    stats = [shard_stats(shard_path(folder, c)) for c in done]
    lookup: dict[str, Any] = {}
    if todo:
        from ghns.raykit import resolve_device

        store = folder / STORE
        try:
            lookup = prepare_store(run, store, len(classes), settings, resolve_device(cfg) == "cuda")
            stats += _generate(cfg, run, todo, folder, store, settings, temperature)
        finally:
            shutil.rmtree(store, ignore_errors=True)
    return stats, temperature, lookup


STORE = "store"  # the class-sorted embedding store and part index, while the bank is written


def prepare_store(run: RunDir, store: Path, n_classes: int, settings: dict[str, Any],
                  use_gpu: bool = False) -> dict[str, Any]:
    """Write what the actors read: the train split's part embeddings sorted by class
    (``PartStore``), and the class centroids (donor rule) or one part index per part (every-class
    rule, built once here, not per actor). Returns the lookup's figures: its kind, size, build
    seconds and, for an approximate index, its recall against exact search on sampled queries."""
    from ghns.generate.actor import CENTROIDS
    from ghns.generate.neighbours import PartNeighbours, search_recall
    from ghns.generate.pool import PartStore, centroids_of

    t0 = time.perf_counter()
    pool = PartStore.write(store, run.embeddings, n_classes)
    out: dict[str, Any] = {"store_mb": round(len(pool) * pool.parts * pool.dim * 4 / 2**20, 2),
                           "store_s": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    if settings["donor_classes"] > 0:
        centroids = centroids_of(pool)
        np.save(store / CENTROIDS, centroids)
        out.update({"kind": "exact over donor classes", "index_mb": 0.0,
                    "centroids_mb": round(centroids.nbytes / 2**20, 2),
                    "build_s": round(time.perf_counter() - t0, 2), "recall": 1.0})
        return out
    index = PartNeighbours.build(pool, settings["neighbour_index"], use_gpu)
    size = index.write(store)
    out.update({"kind": index.kind, "index_mb": round(size / 2**20, 2),
                "build_s": round(time.perf_counter() - t0, 2), "recall": 1.0})
    if index.kind != "flat" and len(pool):
        rng = np.random.default_rng(0)
        queries = np.sort(rng.choice(len(pool), size=min(len(pool), 128), replace=False))
        k = settings["neighbors"]
        index.tune(queries, k)
        index.write(store)  # with the tuned nprobe
        out["recall"] = round(float(np.mean([search_recall(index, queries, p, k)
                                             for p in range(pool.parts)])), 4)
        out["recall_of"] = f"{k} nearest other-class parts, {len(queries)} sampled queries per part"
        out.update({"nprobe": index.nprobe, "nlist": index.nlist})
        log.info("generate: %s part index (nprobe %d of %d lists), recall %.3f against exact search",
                 index.kind, index.nprobe, index.nlist, out["recall"])
    return out


def filternet_temperature(run: RunDir) -> float:
    """FilterNet's temperature fitted on the val split's (unshuffled) sets; 1.0 without val."""
    import torch

    from ghns.train_parts.stage import load_filternet_file
    from ghns.train_parts.table import read_embeddings
    from ghns.generate.scoring import fit_temperature

    meta, emb = read_embeddings(run.embeddings)
    val = (meta["split"] == "val").to_numpy()
    if not val.any():
        log.warning("generate: no val split to calibrate FilterNet on; temperature 1")
        return 1.0
    net = load_filternet_file(run.filternet)
    with torch.no_grad():
        logits = net(torch.from_numpy(emb[val])).double().numpy()
    temperature = fit_temperature(logits, meta["label"].to_numpy()[val])
    log.info("generate: FilterNet temperature %.3g (fitted on %d val sets)", temperature, int(val.sum()))
    return temperature


def _inputs_digest(run: RunDir) -> str:
    """Identifies the stage-1 outputs the shards were made from (FilterNet bytes, table stamp)."""
    digest = hashlib.md5(run.filternet.read_bytes())
    stat = run.embeddings.stat()
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _generate(cfg: Config, run: RunDir, todo: list[int], folder: Path, store: Path,
              settings: dict[str, Any], temperature: float) -> list[dict]:
    from ghns.raykit import map_batches_pandas, resolve_device, torch_threads_for
    from ghns.generate.actor import GenerateActor

    out = map_batches_pandas(
        pd.DataFrame({"class": todo}), GenerateActor,
        {"store_path": str(store.resolve()), "filternet_path": str(run.filternet.resolve()),
         "out_dir": str(folder.resolve()), "per_class": settings["per_class"], "tau": settings["tau"],
         "neighbors": settings["neighbors"], "max_similarity": settings["max_part_similarity"],
         "band_quantile": settings["band_quantile"], "temperature": temperature,
         "donors": settings["donor_classes"],
         "threads": torch_threads_for(cfg.actors),
         "use_gpu": resolve_device(cfg) == "cuda"},
        cfg, actors=cfg.actors, batch_size=class_batch(len(todo), cfg.actors))
    return out.drop(columns=["_order"], errors="ignore").to_dict("records")


def class_batch(classes: int, actors: int) -> int:
    """Classes per Ray Data batch: about 8 batches per actor (load balance; every class still
    writes its own shard, so resumption is per class), at most 64 classes a batch. One class per
    batch costs Ray Data's per-batch overhead (about 0.2 s here) on every class."""
    return max(1, min(64, classes // (8 * max(1, actors))))


def bank_figures(run: RunDir, catalog: Catalog, folder: Path, per_class: int) -> dict[str, Any]:
    """``purity`` (null without part ground truth), ``same_variant_rate`` (the same) and
    ``swap_similarity`` of the bank in ``folder`` (see ``ghns.generate.purity``)."""
    from ghns.train_parts.table import read_embeddings
    from ghns.generate.bank import read_bank
    from ghns.generate.purity import purity_figures, similarity_figures

    bank, _ = read_bank(folder, with_embeddings=False)
    out: dict[str, Any] = {"purity": None, "same_variant_rate": None, "swap_similarity": None}
    if bank.empty:
        return out
    meta, emb = read_embeddings(run.embeddings)
    train = (meta["split"] == "train").to_numpy()
    row_of = {int(i): r for r, i in enumerate(meta["image_id"].to_numpy()[train])}
    out["swap_similarity"] = similarity_figures(bank, row_of, emb[train], meta["label"].to_numpy()[train])
    truth = part_truth(run, catalog)
    if truth is not None:
        variants, true_part = truth
        purity = purity_figures(bank, variants, true_part, per_class)
        out["same_variant_rate"] = purity.pop("same_variant_rate")
        purity["per_class"] = {catalog.classes[c]: v for c, v in purity["per_class"].items()}
        out["purity"] = purity
    return out


def part_truth(run: RunDir, catalog: Catalog) -> tuple[np.ndarray, dict[int, int]] | None:
    """Synthetic data only (its classes are known part variants): each class's variant per true
    part (C, 3) and the learned -> true part assignment that localization fitted on train."""
    attrs = catalog.info.get("class_attributes")
    if not attrs or not run.localization_json.is_file():
        return None
    assignment = json.loads(run.localization_json.read_text()).get("part_assignment")
    if not assignment:
        return None
    true_part = {int(learned[4:]) - 1: ["head", "body", "tail"].index(name)
                 for name, learned in assignment.items()}
    return np.array([attrs[name] for name in catalog.classes]), true_part


def summarize(stats: list[dict], class_names: list[str], per_class: int) -> dict[str, Any]:
    stats = sorted(stats, key=lambda s: s["class"])
    candidates = int(sum(s["candidates"] for s in stats))
    passed = int(sum(s["passed"] for s in stats))
    kept = int(sum(s["kept"] for s in stats))
    short = [{"class": class_names[s["class"]], "kept": s["kept"], "reason": s["reason"]}
             for s in stats if s["kept"] < per_class]
    fill = np.array([s["kept"] / per_class for s in stats]) if stats else np.zeros(0)
    return {
        "classes": len(stats), "per_class": per_class, "kept": kept, "candidates": candidates,
        "fully_scored": int(sum(s["fully_scored"] for s in stats)),
        "pass_rate": round(passed / candidates, 4) if candidates else None,
        "fill": {"full": int((fill >= 1).sum()), "mean": round(float(fill.mean()), 4) if len(fill) else None,
                 "min": round(float(fill.min()), 4) if len(fill) else None},
        "classes_short": len(short), "short": short,
        "per_class_kept": {class_names[s["class"]]: s["kept"] for s in stats},
    }
