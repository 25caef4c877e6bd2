"""``ghns study``: do the generated hard negatives help? The instrument, with error bars.

For one finished run, the study trains the stage-3 parts classifier in two arms, **with** the n+
term of the quadruplet loss (Eq. 9-10, the generator's bank) and **without** it (the triplet
(r, p, n) with margin m1), for each of ``--seeds`` seeds, on the run's stage-1 embeddings (seconds
per classifier). Each classifier is fused with the run's original and object classifiers by the
run's ``fusion_rule``, chosen on val as ``ghns evaluate`` does, and both arms are scored on
the same test images, so every comparison is paired:

* per arm, mean and standard deviation over seeds of parts and fused test top-1;
* the paired difference (with minus without) with a 95% interval from a two-way bootstrap over
  seeds and test images, and the exact McNemar p-value on the pooled predictions
  (``ghns.stats``);
* the error count, per arm, on the class pairs the two arms confuse most.

A grid of generator settings (``--tau-grid``, ``--per-class-grid``) adds a "with" arm per
setting, which gives the paper's Fig. 4 (accuracy against N). A bank for N negatives per class is
the first N of a bank for more (the generator keeps them in a fixed visiting order), so each tau
is generated once, for the largest N. Every classifier is one job of one Ray Train run (workers
share the jobs); a job writes its scores when it ends, so an interrupted study resumes job by job.

Contract (read by other tools): ``study/study.json`` has ``{"seeds": [...], "arms": {"with":
{"parts": [per seed], "fused": [per seed]}, "without": {...}}, "paired": {"parts": {"mean",
"ci95": [lo, hi], "mcnemar_p"}, "fused": {...}}}`` (test top-1, percent), plus ``summary``,
``grid``, ``confused_pairs`` and ``settings``; ``study.md`` and ``study.png`` show the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ghns.errors import ConfigError, StageError
from ghns.rundir import RunDir, atomic_path, atomic_write_text, holds_run_lock
from ghns.train.specs import StudySpec

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BankSpec:
    """One generator setting of the study: tau and negatives per class."""

    tau: float
    per_class: int

    @property
    def key(self) -> str:
        return f"tau{self.tau:g}-n{self.per_class}"


@dataclass(frozen=True)
class Job:
    """One parts classifier to train: an arm, a seed and (for "with") a bank setting."""

    seed: int
    bank: BankSpec | None  # None: the "without" arm

    @property
    def name(self) -> str:
        return f"without-s{self.seed}" if self.bank is None else f"with-{self.bank.key}-s{self.seed}"


def parse_grid(text: str | None, kind: type, name: str) -> list:
    """'0.5,0.9' -> [0.5, 0.9]; a one-line error naming the option for anything else."""
    if text is None or str(text).strip() == "":
        return []
    try:
        values = [kind(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"'{name}' must be a comma-separated list of numbers, got {text!r}") from None
    return values


def plan(seeds: list[int], banks: list[BankSpec]) -> list[Job]:
    """Every job: the "without" arm once per seed, the "with" arm per seed and bank."""
    jobs = [Job(s, None) for s in seeds]
    jobs += [Job(s, b) for b in banks for s in seeds]
    return jobs


# -- the Ray Train loop ------------------------------------------------------------------------

def study_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: this worker's share of the jobs, one after another (no DDP: each
    job is a whole classifier; workers split the jobs)."""
    from ghns.stage3.parts import NegativeBank, PartsData, fit_parts_classifier, parts_probe, parts_softmax
    from ghns.stage1.table import read_embeddings
    from ghns.train.runner import WorkerContext

    spec, ctx = StudySpec.of(config), WorkerContext(config)
    data = PartsData.read(Path(spec.embeddings))
    meta, emb = read_embeddings(Path(spec.embeddings))
    evaluated = meta["split"].isin(["val", "test"]).to_numpy()
    eval_ids, eval_sets = meta["image_id"].to_numpy()[evaluated], emb[evaluated]
    dim = data.train_x.shape[1]
    probe = parts_probe(data, spec.num_classes)  # every job starts from the same probe
    banks: dict[str, NegativeBank] = {}
    jobs = spec.jobs[ctx.rank::ctx.world]
    out_dir = Path(spec.jobs_dir)
    for i, job in enumerate(jobs):
        out = out_dir / f"{job['name']}.npz"
        if out.is_file():
            continue
        t0 = time.perf_counter()
        bank = NegativeBank.empty(dim)
        if job["bank"] is not None:
            key = job["bank"]["key"]
            if key not in banks:
                banks[key] = NegativeBank.read(Path(job["bank"]["folder"]), dim, job["bank"]["per_class"])
            bank = banks[key]
        model, best = fit_parts_classifier(data, bank, spec.parts, spec.num_classes, job["seed"],
                                           job["bank"] is not None, probe=probe)
        with atomic_path(out, suffix=".npz") as tmp:  # savez appends .npz otherwise
            np.savez_compressed(tmp, image_id=eval_ids, scores=parts_softmax(model, eval_sets),
                                val_acc=best.acc, epoch_kept=best.epoch, bank_size=len(bank))
        print(f"study: {job['name']} done ({i + 1}/{len(jobs)} on worker {ctx.rank}): val top-1 "
              f"{best.acc:.2f}, {time.perf_counter() - t0:.1f} s", flush=True)


# -- the driver --------------------------------------------------------------------------------

@holds_run_lock
def run_study(cfg: Config, seeds: int, tau_grid: list[float] | None = None,
              per_class_grid: list[int] | None = None, out: str | None = None,
              force: bool = False) -> dict[str, Any]:
    """Run the study over ``cfg.run_dir`` (running what it needs first); returns study.json."""
    from ghns.data.catalog import Catalog
    from ghns.pipeline import run_until

    if seeds < 2:
        raise ConfigError(f"'seeds' must be >= 2 (an interval needs several seeds), got {seeds}")
    run = RunDir(cfg.run_dir)
    if "evaluate" not in run.stages() or not (run.scores / "test.npz").is_file():
        run_until(cfg, "evaluate")
    folder = Path(out) if out else run.path / "study"
    if force:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.read(run.catalog)
    banks = [BankSpec(t, n) for t in (tau_grid or [cfg.tau]) for n in (per_class_grid or [cfg.per_class])]
    main_bank = BankSpec(cfg.tau, cfg.per_class)
    if main_bank not in banks:
        banks.insert(0, main_bank)
    folders = bank_folders(cfg, run, folder, banks)
    seed_list = list(range(cfg.seed, cfg.seed + seeds))
    jobs = plan(seed_list, banks)
    parts = _parts_config(cfg)
    digest = _digest({"parts": parts, "inputs": _embeddings_stamp(run)})
    jobs_dir = folder / "jobs" / digest
    jobs_dir.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not (jobs_dir / f"{j.name}.npz").is_file()]
    start = time.perf_counter()
    if todo:
        log.info("study: %d of %d classifiers to train (%d seeds, %d bank setting(s))",
                 len(todo), len(jobs), seeds, len(banks))
        _train_jobs(cfg, run, todo, folders, jobs_dir, parts, len(catalog.classes), digest)
    else:
        log.info("study: all %d classifiers trained already", len(jobs))
    scores = {j.name: dict(np.load(jobs_dir / f"{j.name}.npz")) for j in jobs}
    run_scores = {s: dict(np.load(run.scores / f"{s}.npz")) for s in ("val", "test")}
    result = summarize_study(scores, run_scores, seed_list, banks, main_bank, catalog.classes,
                             cfg.fusion_rule, cfg.fusion_step)
    result["settings"] = {"run_dir": str(run.path), "parts": parts, "banks": {
        b.key: {"tau": b.tau, "per_class": b.per_class, "folder": str(folders[b.key])} for b in banks},
        "jobs": str(jobs_dir), "seconds_training": round(time.perf_counter() - start, 1)}
    atomic_write_text(folder / "study.json", json.dumps(result, indent=2))
    atomic_write_text(folder / "study.md", render_study(result))
    study_figure(result, folder / "study.png")
    return result


def _parts_config(cfg: Config) -> dict[str, Any]:
    from dataclasses import asdict

    from ghns.stage3.parts import PartsSettings

    return asdict(PartsSettings.from_config(cfg))


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _embeddings_stamp(run: RunDir) -> str:
    stat = run.embeddings.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def bank_folders(cfg: Config, run: RunDir, folder: Path, banks: list[BankSpec]) -> dict[str, Path]:
    """Where each bank setting's negatives are: the run's own bank when its settings match and it
    holds at least N per class, else a bank generated for the study (once per tau, at the largest
    N of the grid) under ``<study>/banks/``."""
    from ghns.stage2.stage import generator_settings, prepare_bank, write_bank

    own = json.loads((run.negatives / "settings.json").read_text()) if (
        run.negatives / "settings.json").is_file() else None
    out: dict[str, Path] = {}
    for tau in sorted({b.tau for b in banks}):
        largest = max(b.per_class for b in banks if b.tau == tau)
        settings = generator_settings(cfg, tau=tau, per_class=largest)
        same = own is not None and run.generate_json.is_file() and all(
            own["settings"].get(k) == v for k, v in settings.items() if k != "per_class") and \
            own["settings"].get("per_class", 0) >= largest
        if same:
            target = run.negatives
        else:
            target = folder / "banks" / f"{BankSpec(tau, largest).key}-{_digest(settings)}"
            prepare_bank(run, target, settings)
            log.info("study: generating a bank at tau %g, %d per class, into %s", tau, largest, target)
            write_bank(cfg, run, target, settings)
        for b in banks:
            if b.tau == tau:
                out[b.key] = target
    return out


def _train_jobs(cfg: Config, run: RunDir, todo: list[Job], folders: dict[str, Path], jobs_dir: Path,
                parts: dict[str, Any], num_classes: int, digest: str) -> None:
    from ghns.stage3.parts import PartsSettings
    from ghns.train.runner import fit

    name = f"study_{digest}"
    shutil.rmtree(run.path / "ray" / name, ignore_errors=True)  # resumption is per job, not per epoch
    jobs = [{"name": j.name, "seed": j.seed,
             "bank": None if j.bank is None else {"key": j.bank.key, "per_class": j.bank.per_class,
                                                  "folder": str(folders[j.bank.key].resolve())}}
            for j in todo]
    spec = StudySpec(parts=PartsSettings.from_dict(parts), embeddings=str(run.embeddings.resolve()),
                     jobs_dir=str(jobs_dir.resolve()), num_classes=num_classes, jobs=jobs)
    fit(study_loop, spec, cfg, name=name)
    missing = [j.name for j in todo if not (jobs_dir / f"{j.name}.npz").is_file()]
    if missing:
        raise StageError(f"study: {len(missing)} classifier(s) did not finish ({missing[0]}, ...)")


# -- the figures (pure) ------------------------------------------------------------------------

def _aligned(job: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    row = {int(i): r for r, i in enumerate(job["image_id"])}
    return job["scores"][[row[int(i)] for i in ids]]


def arm_predictions(job: dict[str, np.ndarray], run_scores: dict[str, dict[str, np.ndarray]],
                    rule: str = "loglinear", step: float = 0.05) -> dict[str, Any]:
    """One classifier's test predictions alone and fused with the run's original and object
    classifiers by ``rule``, chosen on val (as the evaluate stage does)."""
    from ghns.fusion import choose_fusion

    val, test = run_scores["val"], run_scores["test"]
    parts_val, parts_test = _aligned(job, val["image_id"]), _aligned(job, test["image_id"])
    fusion = choose_fusion([val["original"], val["object"], parts_val], val["label"], rule, step)
    fused = fusion([test["original"], test["object"], parts_test])
    return {"parts": parts_test.argmax(1), "fused": fused.argmax(1), "fusion": fusion.describe()}


def summarize_study(scores: dict[str, dict[str, np.ndarray]], run_scores: dict[str, dict[str, np.ndarray]],
                    seeds: list[int], banks: list[BankSpec], main: BankSpec, class_names: list[str],
                    rule: str = "loglinear", step: float = 0.05, n_boot: int = 10_000) -> dict[str, Any]:
    """study.json from the jobs' scores and the run's val/test scores (see the module doc)."""
    from ghns.stats import mcnemar, mean_std, paired_bootstrap

    labels = run_scores["test"]["label"]
    preds = {name: arm_predictions(job, run_scores, rule, step) for name, job in scores.items()}

    def correct(arm: str, which: str) -> np.ndarray:  # (S, N)
        return np.stack([preds[arm.format(seed=s)][which] == labels for s in seeds])

    def top1(mat: np.ndarray) -> list[float]:
        return [round(100.0 * float(r.mean()), 2) for r in mat]

    without = "without-s{seed}"
    result: dict[str, Any] = {"seeds": seeds, "test_images": int(len(labels)), "main_bank": main.key}
    result["arms"] = {"without": {w: top1(correct(without, w)) for w in ("parts", "fused")}}
    grid = []
    for bank in banks:
        arm = f"with-{bank.key}-s{{seed}}"
        entry: dict[str, Any] = {"tau": bank.tau, "per_class": bank.per_class}
        for which in ("parts", "fused"):
            a, b = correct(arm, which), correct(without, which)
            boot = paired_bootstrap(a, b, n_boot=n_boot)
            entry[which] = {"per_seed": top1(a), **mean_std(top1(a)),
                            "paired": {"mean": boot["mean"], "ci95": boot["ci95"],
                                       "mcnemar_p": round(mcnemar(a, b)["p"], 6),
                                       **{k: v for k, v in mcnemar(a, b).items() if k != "p"}}}
        entry["bank_size"] = int(np.mean([scores[arm.format(seed=s)]["bank_size"] for s in seeds]))
        grid.append(entry)
        if bank == main:
            result["arms"]["with"] = {w: entry[w]["per_seed"] for w in ("parts", "fused")}
            result["paired"] = {w: entry[w]["paired"] for w in ("parts", "fused")}
    result["summary"] = {arm: {w: mean_std(v) for w, v in vals.items()} for arm, vals in result["arms"].items()}
    result["grid"] = grid
    result["fusion"] = {arm: [preds[(without if arm == "without" else f"with-{main.key}-s{{seed}}")
                                    .format(seed=s)]["fusion"] for s in seeds]
                        for arm in ("with", "without")}
    result["confused_pairs"] = confused_pair_errors(
        {arm: [preds[name.format(seed=s)]["fused"] for s in seeds]
         for arm, name in (("with", f"with-{main.key}-s{{seed}}"), ("without", without))},
        labels, class_names)
    return result


def confused_pair_errors(arm_preds: dict[str, list[np.ndarray]], labels: np.ndarray,
                         class_names: list[str], top: int = 8) -> list[dict[str, Any]]:
    """The class pairs confused most (both directions, both arms pooled) and, per arm, the mean
    number of test errors between the two classes per seed."""
    counts: dict[str, dict[tuple[int, int], int]] = {arm: {} for arm in arm_preds}
    for arm, runs in arm_preds.items():
        for pred in runs:
            for t, p in zip(labels, pred):
                if t != p:
                    key = (int(min(t, p)), int(max(t, p)))
                    counts[arm][key] = counts[arm].get(key, 0) + 1
    pooled: dict[tuple[int, int], int] = {}
    for per_arm in counts.values():
        for key, n in per_arm.items():
            pooled[key] = pooled.get(key, 0) + n
    ranked = sorted(pooled.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"classes": [class_names[a], class_names[b]],
             **{arm: round(counts[arm].get((a, b), 0) / max(1, len(arm_preds[arm])), 2)
                for arm in arm_preds}} for (a, b), _ in ranked]


def render_study(result: dict[str, Any]) -> str:
    s = result["summary"]
    seeds = result["seeds"]
    lines = [f"# ghns study: {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), "
             f"{result['test_images']} test images", "",
             "Test top-1 (%), mean +- std over seeds; the fusion chosen on val per classifier. "
             "Paired difference: with minus without hard negatives, 95% interval from a two-way "
             "bootstrap over seeds and test images; McNemar: exact, pooled predictions.", "",
             "| classifier | with hard negatives | without | paired difference [95% CI] | McNemar p |",
             "| --- | --- | --- | --- | --- |"]
    for which in ("parts", "fused"):
        p = result["paired"][which]
        lines.append(f"| {which} | {s['with'][which]['mean']} +- {s['with'][which]['std']} | "
                     f"{s['without'][which]['mean']} +- {s['without'][which]['std']} | "
                     f"{p['mean']:+.2f} [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}] | {p['mcnemar_p']:.3g} |")
    lines += ["", f"Main bank: {result['main_bank']}.", ""]
    lines += ["Per seed (parts with / without; fused with / without):", ""]
    arms = result["arms"]
    for i, seed in enumerate(seeds):
        lines.append(f"- seed {seed}: {arms['with']['parts'][i]} / {arms['without']['parts'][i]}; "
                     f"{arms['with']['fused'][i]} / {arms['without']['fused'][i]}")
    if len(result["grid"]) > 1:
        lines += ["", "Generator settings (the 'with' arm; accuracy against N is the paper's Fig. 4):", "",
                  "| tau | N | bank | parts | parts - without [95% CI] | fused | fused - without [95% CI] |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for g in result["grid"]:
            pp, fp = g["parts"]["paired"], g["fused"]["paired"]
            lines.append(f"| {g['tau']:g} | {g['per_class']} | {g['bank_size']} | "
                         f"{g['parts']['mean']} +- {g['parts']['std']} | {pp['mean']:+.2f} "
                         f"[{pp['ci95'][0]:+.2f}, {pp['ci95'][1]:+.2f}] | {g['fused']['mean']} +- "
                         f"{g['fused']['std']} | {fp['mean']:+.2f} [{fp['ci95'][0]:+.2f}, {fp['ci95'][1]:+.2f}] |")
    if result.get("confused_pairs"):
        lines += ["", "Most confused class pairs (fused, test errors per seed):", "",
                  "| classes | with | without |", "| --- | --- | --- |"]
        lines += [f"| {p['classes'][0]} / {p['classes'][1]} | {p['with']} | {p['without']} |"
                  for p in result["confused_pairs"]]
    return "\n".join(lines) + "\n"


def study_figure(result: dict[str, Any], path: Path) -> None:
    """Left: each arm's test top-1 per seed (parts and fused), pairs joined. Middle: the paired
    differences with their 95% intervals. Right (with a grid of N): accuracy against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = result["grid"]
    ns = sorted({g["per_class"] for g in grid})
    panels = 3 if len(ns) > 1 else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4))
    arms = result["arms"]
    for j, which in enumerate(("parts", "fused")):
        w, wo = arms["with"][which], arms["without"][which]
        x0 = 3 * j
        for a, b in zip(w, wo):
            axes[0].plot([x0, x0 + 1], [b, a], color="#999", lw=0.8)
        axes[0].scatter([x0] * len(wo), wo, color="#555", label="without" if j == 0 else None, zorder=3)
        axes[0].scatter([x0 + 1] * len(w), w, color="#c33", label="with" if j == 0 else None, zorder=3)
    axes[0].set_xticks([0, 1, 3, 4], ["parts\nwithout", "parts\nwith", "fused\nwithout", "fused\nwith"])
    axes[0].set_ylabel("test top-1 (%)")
    axes[0].set_title(f"per seed ({len(result['seeds'])} seeds)")
    axes[0].legend(loc="best", fontsize=8)
    for j, which in enumerate(("parts", "fused")):
        p = result["paired"][which]
        axes[1].errorbar([j], [p["mean"]], yerr=[[p["mean"] - p["ci95"][0]], [p["ci95"][1] - p["mean"]]],
                         fmt="o", color="#c33", capsize=6)
    axes[1].axhline(0, color="#555", lw=0.8)
    axes[1].set_xticks([0, 1], ["parts", "fused"])
    axes[1].set_xlim(-0.6, 1.6)
    axes[1].set_ylabel("with - without (points)")
    axes[1].set_title("paired difference, 95% CI")
    if panels == 3:
        ax = axes[2]
        for tau in sorted({g["tau"] for g in grid}):
            rows = sorted((g for g in grid if g["tau"] == tau), key=lambda g: g["per_class"])
            ax.errorbar([g["per_class"] for g in rows], [g["parts"]["mean"] for g in rows],
                        yerr=[g["parts"]["std"] for g in rows], marker="o", capsize=3, label=f"tau {tau:g}")
        base = result["summary"]["without"]["parts"]
        ax.axhline(base["mean"], color="#555", ls="--", lw=1, label="without")
        ax.set_xlabel("hard negatives per class (N)")
        ax.set_ylabel("parts test top-1 (%)")
        ax.set_title("accuracy against N (Fig. 4)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
