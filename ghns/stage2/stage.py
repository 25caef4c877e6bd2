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
from typing import Any

import numpy as np
import pandas as pd

from ghns.data.catalog import Catalog
from ghns.errors import StageError
from ghns.rundir import RunDir, fingerprint
from ghns.stage2.bank import shard_path, shard_stats

log = logging.getLogger(__name__)


def run_generate(cfg, force: bool = False) -> dict[str, Any]:
    run = RunDir(cfg.run_dir)
    if not (run.embeddings.is_file() and run.filternet.is_file()):
        raise StageError(f"{run.embeddings} or {run.filternet} is missing: run 'ghns train-parts' first")
    fp = fingerprint(cfg, "generate")
    if run.generate_json.is_file() and run.is_done("generate", fp, force):
        log.info("generate: done already (%s)", run.negatives)
        return json.loads(run.generate_json.read_text())
    catalog = Catalog.read(run.catalog)
    settings = {k: fp[k] for k in ("per_class", "tau", "neighbors", "max_part_similarity")}
    inputs = _inputs_digest(run)
    settings_file = run.negatives / "settings.json"
    previous = json.loads(settings_file.read_text()) if settings_file.is_file() else None
    if force or (previous is not None and previous.get("inputs") != inputs):
        if previous is not None and not force:
            log.info("generate: stage 1 changed since %s was written; starting over", run.negatives)
        shutil.rmtree(run.negatives, ignore_errors=True)
    elif previous is not None and previous.get("settings") != settings:
        raise StageError(f"{run.negatives} holds an interrupted run with other settings "
                         f"({previous.get('settings')}); pass --force to start over")
    run.negatives.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps({"settings": settings, "inputs": inputs}))

    with run.stage("generate", fp) as record:
        start = time.perf_counter()
        classes = list(range(len(catalog.classes)))
        done = [c for c in classes if shard_path(run.negatives, c).is_file()]
        todo = [c for c in classes if c not in set(done)]
        if done:
            log.info("generate: resuming, %d of %d classes already done", len(done), len(classes))
        stats = [shard_stats(shard_path(run.negatives, c)) for c in done]
        if todo:
            stats += _generate(cfg, run, todo)
        figures = summarize(stats, catalog.classes, cfg.per_class)
        truth = same_variant_rate(run, catalog)
        if truth is not None:
            figures["same_variant_rate"] = truth
        figures.update({"settings": settings, "actors": cfg.actors,
                        "seconds": round(time.perf_counter() - start, 2)})
        record["figures"] = {k: figures[k] for k in ("kept", "candidates", "classes_short")}
        run.generate_json.write_text(json.dumps(figures, indent=2))
    return figures


def _inputs_digest(run: RunDir) -> str:
    """Identifies the stage-1 outputs the shards were made from (FilterNet bytes, table stamp)."""
    digest = hashlib.md5(run.filternet.read_bytes())
    stat = run.embeddings.stat()
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _generate(cfg, run: RunDir, todo: list[int]) -> list[dict]:
    from ghns.raykit import map_batches_pandas, resolve_device, torch_threads_for
    from ghns.stage2.actor import GenerateActor

    out = map_batches_pandas(
        pd.DataFrame({"class": todo}), GenerateActor,
        {"embeddings_path": str(run.embeddings.resolve()), "filternet_path": str(run.filternet.resolve()),
         "out_dir": str(run.negatives.resolve()), "per_class": cfg.per_class, "tau": cfg.tau,
         "neighbors": cfg.neighbors, "max_similarity": cfg.max_part_similarity,
         "threads": torch_threads_for(cfg.actors),
         "use_gpu": resolve_device(cfg) == "cuda"},
        cfg, actors=cfg.actors, batch_size=1)
    return out.drop(columns=["_order"], errors="ignore").to_dict("records")


def same_variant_rate(run: RunDir, catalog: Catalog) -> float | None:
    """Synthetic data only (its classes are known part variants): the share of kept negatives whose
    swapped parts all have the reference's own variant, so that the set looks exactly like the
    reference class (a false negative). Uses ground truth for measuring, never for generating."""
    from ghns.stage2.bank import read_bank

    attrs = catalog.info.get("class_attributes")
    if not attrs or not run.localization_json.is_file():
        return None
    assignment = json.loads(run.localization_json.read_text()).get("part_assignment")
    if not assignment:
        return None
    true_part = {int(learned[4:]) - 1: ["head", "body", "tail"].index(name)
                 for name, learned in assignment.items()}
    bank, _ = read_bank(run.negatives, with_embeddings=False)
    if bank.empty:
        return None
    variants = np.array([attrs[name] for name in catalog.classes])  # (C, 3)
    same = np.ones(len(bank), bool)
    for k in range(3):
        swapped = bank["swapped"].str[k] == "1"
        ref_v = variants[bank["class"].to_numpy(), true_part[k]]
        src_v = variants[bank[f"part{k + 1}_class"].to_numpy(), true_part[k]]
        same &= ~swapped | (ref_v == src_v)
    return round(float(same.mean()), 4)


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
