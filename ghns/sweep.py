"""Ray Tune sweeps over a finished (or partly finished) run: ``ghns sweep``.

Three search spaces, each re-running only the stages its parameters feed, in one trial directory
per trial under ``<run_dir>/sweeps/<space>/`` that links the base run's upstream outputs:

- ``train-parts``: the loss weights alpha, beta, gamma (Eq. 7). A trial trains the part networks
  (Ray Train, Train V2 style: the trial is a driver function that builds the ``TorchTrainer``);
  every epoch's validation accuracy reaches Tune, so ASHA stops weak trials early.
- ``generate``: tau and negatives per class N. A trial generates the bank and trains the parts
  classifier on it (ASHA on its per-epoch validation accuracy); the fused validation accuracy
  with the base run's original and object classifiers is reported beside it.
- ``fusion``: the fusion weights (a, b, c) of Eq. 11, from the cached validation scores: no
  training, a trial costs milliseconds.

Every objective is a validation accuracy; test is never looked at. The sweep writes
``results.csv`` and ``results.md`` (one row per trial) and ``best.yaml``: the base configuration
with the best trial's values, which ``ghns pipeline --config best.yaml`` takes as is.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from ghns import stages as _stages
from ghns.errors import StageError
from ghns.rundir import RunDir, atomic_write_text, holds_run_lock

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)

SPACES = ("train-parts", "generate", "fusion")  # a stage swept (its own settings), or fusion


def needs(run: RunDir, space: str) -> list[Path]:
    """What a trial of ``space`` takes from the base run (linked into the trial's directory)."""
    upstream = [run.catalog, run.localization, run.localization_json, run.path / "localize"]
    if space == "train-parts":
        return upstream
    if space == "generate":
        return upstream + [run.train_parts, run.train_parts_json, run.embeddings, run.scores]
    return [run.scores]


def inherited(space: str) -> tuple[str, ...]:
    """The stages a trial of ``space`` inherits as done: those before the swept stage."""
    return _stages.NAMES[: _stages.NAMES.index(space)] if space in _stages.NAMES else ()


# The metric Tune maximises (every report; FINAL: the last report only) and what is swept.
METRIC = {"train-parts": "val_acc_parts_vote", "generate": "val_acc", "fusion": "val_fused"}
FINAL = {"train-parts": "filternet_val_accuracy", "generate": "val_fused", "fusion": "val_fused"}
PARAMS = {"train-parts": ("alpha", "beta", "gamma"), "generate": ("tau", "per_class"),
          "fusion": ("fusion_weights",)}


def search_space(space: str, step: float = 0.05) -> dict[str, Any]:
    """The Tune search space of ``space`` (random search over these distributions)."""
    from ray import tune

    from ghns.fusion import weight_grid

    if space == "train-parts":
        return {"alpha": tune.quniform(0.5, 1.5, 0.05), "beta": tune.quniform(0.0, 1.5, 0.05),
                "gamma": tune.quniform(0.0, 1.5, 0.05)}
    if space == "generate":
        return {"tau": tune.quniform(0.3, 0.99, 0.01), "per_class": tune.choice([50, 100, 150, 200])}
    if space == "fusion":
        return {"fusion_weights": tune.choice([",".join(f"{w:g}" for w in t)
                                               for t in weight_grid(3, step)])}
    raise StageError(f"unknown sweep space {space!r}; choose one of {', '.join(SPACES)}")


def check_base(run: RunDir, space: str) -> None:
    """A one-line error when the base run lacks what ``space`` builds on."""
    missing = [p.name for p in needs(run, space) if not p.exists()]
    if missing:
        first = {"train-parts": "ghns localize", "generate": "ghns pipeline", "fusion": "ghns pipeline"}
        raise StageError(f"sweep --space {space} needs {', '.join(missing)} in {run.path}: "
                         f"run '{first[space]} --run-dir {run.path}' first")


def trial_dir(base: RunDir, sweep_dir: Path, space: str, trial_id: str) -> RunDir:
    """A run directory for one trial: the base run's upstream outputs linked in, its stage
    records copied for the inherited stages (so their fingerprints still hold)."""
    out = RunDir(sweep_dir / "trials" / trial_id)
    out.path.mkdir(parents=True, exist_ok=True)
    for path in needs(base, space):
        link = out.path / path.relative_to(base.path)  # under the base run's own names
        if not link.exists():
            link.symlink_to(path.resolve())
    stages = base.stages()
    out.write_stages({k: stages[k] for k in inherited(space) if k in stages})
    return out


def _trial(params: dict[str, Any], *, base_config: dict[str, Any], base_dir: str, sweep_dir: str,
           space: str) -> None:
    """One trial (runs in a Tune trial actor): re-run what ``params`` feed, report the metric."""
    from ray import tune

    from ghns.config import Config

    base = RunDir(base_dir)
    if space == "fusion":
        tune.report({METRIC[space]: fusion_objective(base, params["fusion_weights"])})
        return
    trial_id = tune.get_context().get_trial_id()
    run = trial_dir(base, Path(sweep_dir), space, trial_id)
    cfg = Config(**{**base_config, **params, "run_dir": str(run.path),
                    "ray_address": base_config.get("ray_address")})
    if space == "train-parts":
        from ghns.train_parts.stage import run_train_parts

        figures = run_train_parts(cfg)
        tune.report({METRIC[space]: figures["val_accuracy_parts_vote"],
                     "filternet_val_accuracy": figures["filternet"]["val_accuracy"]})
    else:
        tune.report(_generate_trial(cfg, run, base))


def _generate_trial(cfg: Config, run: RunDir, base: RunDir) -> dict[str, float]:
    from ghns.data import Catalog
    from ghns.fusion import search_weights
    from ghns.train_parts.table import read_embeddings
    from ghns.generate.stage import run_generate
    from ghns.evaluate import parts_scores
    from ghns.train_final.stage import train_model

    gen = run_generate(cfg)
    figures = train_model(cfg, run, Catalog.read(run.catalog), "parts")
    val = dict(np.load(base.scores / "val.npz"))
    meta, emb = read_embeddings(run.embeddings)
    index = {int(i): k for k, i in enumerate(meta["image_id"])}
    parts = parts_scores(run.train_final / "parts.pt", emb[[index[int(i)] for i in val["image_id"]]])
    weights, fused = search_weights([val["original"], val["object"], parts], val["label"],
                                    cfg.fusion_step)
    return {METRIC["generate"]: figures["val_accuracy"], "val_fused": round(fused, 2),
            "kept": gen["kept"], "fusion_weights": ",".join(f"{w:g}" for w in weights)}


def fusion_objective(base: RunDir, weights: str) -> float:
    """Validation top-1 of the three classifiers fused with ``weights`` ('a,b,c')."""
    from ghns.fusion import fuse, topk_accuracy

    val = dict(np.load(base.scores / "val.npz"))
    w = tuple(float(v) for v in weights.split(","))
    return round(topk_accuracy(fuse([val["original"], val["object"], val["parts"]], w),
                               val["label"]), 2)


@dataclass
class SweepResult:
    table: list[dict[str, Any]]
    best: dict[str, Any]
    best_config: Path
    directory: Path


@holds_run_lock
def run_sweep(cfg: Config, space: str, trials: int, scheduler: str = "asha", concurrent: int = 1,
              seed: int | None = None) -> SweepResult:
    """Run ``trials`` Tune trials of ``space`` over the run in ``cfg.run_dir``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from ghns.raykit import ensure_ray

    if space not in SPACES:
        renamed = {"stage1": "train-parts", "stage2": "generate"}.get(space)
        raise StageError(f"unknown sweep space {space!r}; choose one of {', '.join(SPACES)}"
                         + (f" ('{space}' is called '{renamed}' now)" if renamed else ""))
    base = RunDir(cfg.run_dir)
    check_base(base, space)
    sweep_dir = (base.path / "sweeps" / space).resolve()
    if sweep_dir.exists():  # a sweep is cheap to redo and its trials are not resumable one by one
        shutil.rmtree(sweep_dir)
    sweep_dir.mkdir(parents=True)
    ensure_ray(cfg)
    max_t = {"train-parts": cfg.stage1_epochs, "generate": cfg.parts_epochs}.get(space, 1)
    # ASHA counts epochs (the loops' "epoch", 0-based), not reports: Ray Train reports are
    # throttled (see WorkerContext.report), so one report can cover several epochs.
    sched = (ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=max(1, max_t // 4),
                           reduction_factor=2)
             if scheduler == "asha" and space != "fusion" else FIFOScheduler())
    trainable = tune.with_parameters(_trial, base_config=cfg.to_dict(), base_dir=str(base.path.resolve()),
                                     sweep_dir=str(sweep_dir), space=space)
    # The trial itself only drives: Ray Train's workers and Ray Data's actors hold the CPUs/GPUs.
    # (Tune refuses an all-zero request, so the trial reserves 1 MiB of memory instead of a CPU.)
    trainable = tune.with_resources(trainable, {"cpu": 0, "memory": 2**20})
    tuner = tune.Tuner(
        trainable, param_space=search_space(space, cfg.fusion_step),
        tune_config=tune.TuneConfig(
            metric=METRIC[space], mode="max", num_samples=trials, scheduler=sched,
            max_concurrent_trials=concurrent,
            search_alg=BasicVariantGenerator(random_state=cfg.seed if seed is None else seed)),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=0))
    grid = tuner.fit()
    table = results_table(grid, space)
    if not any(row.get(METRIC[space]) is not None for row in table):
        errors = [str(grid[i].error).splitlines()[0] for i in range(len(grid)) if grid[i].error is not None]
        raise StageError(f"sweep --space {space}: no trial finished"
                         + (f" (first error: {errors[0]})" if errors else ""))
    best = max((r for r in table if r.get(METRIC[space]) is not None), key=lambda r: r[METRIC[space]])
    best_config = write_outputs(cfg, space, table, best, sweep_dir)
    return SweepResult(table, best, best_config, sweep_dir)


def results_table(grid, space: str) -> list[dict[str, Any]]:
    """One row per trial: its parameters, its last metrics, epochs reached and status."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        row = {"trial": metrics.get("trial_id") or Path(result.path).name}
        row.update({k: result.config.get(k) for k in PARAMS[space]})
        value = metrics.get(METRIC[space])
        row[METRIC[space]] = round(float(value), 2) if value is not None else None
        for extra in ("filternet_val_accuracy", "val_fused", "kept"):
            if extra in metrics:
                row[extra] = metrics[extra]
        row["iterations"] = metrics.get("training_iteration")
        row["status"] = ("error" if result.error is not None else
                         "done" if FINAL[space] in metrics else "stopped early (ASHA)")
        rows.append(row)
    return sorted(rows, key=lambda r: -(r[METRIC[space]] if r[METRIC[space]] is not None else -1))


def best_values(space: str, best: dict[str, Any]) -> dict[str, Any]:
    values = {k: best[k] for k in PARAMS[space]}
    for key in ("alpha", "beta", "gamma", "tau"):
        if key in values:
            values[key] = round(float(values[key]), 4)
    return values


def write_outputs(cfg: Config, space: str, table: list[dict[str, Any]], best: dict[str, Any],
                  sweep_dir: Path) -> Path:
    import pandas as pd

    pd.DataFrame(table).to_csv(sweep_dir / "results.csv", index=False)
    cols = list(table[0])
    lines = [f"# ghns sweep --space {space}: {len(table)} trials, objective {METRIC[space]} "
             "(validation, %)", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |"
              for r in table]
    atomic_write_text(sweep_dir / "results.md", "\n".join(lines) + "\n")
    values = {k: v for k, v in cfg.to_dict().items() if k not in ("run_dir", "ray_address")}
    values.update(best_values(space, best))
    out = sweep_dir / "best.yaml"
    header = (f"# best of 'ghns sweep --space {space}' over {cfg.run_dir}: "
              f"{METRIC[space]} {best[METRIC[space]]} (validation)\n"
              "# use: ghns pipeline --config best.yaml --run-dir NEW_DIR\n")
    atomic_write_text(out, header + yaml.safe_dump(values, sort_keys=False))
    atomic_write_text(sweep_dir / "best.json", json.dumps(best, indent=2, default=str))
    return out

