"""``ghns study``: do the generated hard negatives help? The instrument, with error bars.

Arms (``ARMS``): **without** (the triplet (r, p, n)), **generated** (the quadruplet with the
bank's n+, and ``--negative-logits`` where set; "with" in ``arms``) and **mined** (the quadruplet
with n+ and n mined among the batch's real images, ``ghns.losses.mined_negatives``). Where the run
has unknown images (``ghns.rejection``: synthetic near misses, held-out classes), every arm is also
scored on how well its maximum softmax score tells known test images from them (AUROC).

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
Beside them, ``"vs_without": {ARM: {METRIC: {"mean", "ci95": [lo, hi]}}}`` for ARM in
``generated``, ``mined`` and METRIC in ``parts``, ``fused`` (top-1, points; two-way bootstrap),
``near_miss_auroc`` / ``open_set_auroc`` (the fused prediction's AUROC, in [0, 1]; paired
bootstrap over seeds, known and unknown images: ``ghns.stats.paired_auroc_bootstrap``) and the
same of the parts classifier alone (``near_miss_auroc_parts``, ...); a metric the run cannot have
is absent. ``rejection`` holds each arm's per-seed AUROCs, on test and on val (``..._val``), and
``train_per_class`` the data-scarce cap (null: every train image).

``--part-networks-lr LR`` (> 0) trains every arm's part networks too, as the paper's stage 3 does
(``ghns.train_final.part_networks``: the run's part crops in, stage 1's weights and the probe as
the start), and adds the arm ``generated_online`` (n+ recomposed every step from the training
networks' embeddings of the bank's provenance crops; ``generated`` then keeps the bank's fixed
stage-1 features, the paper's n+). With frozen networks the two would be one arm, so it is absent.
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


ARMS = ("without", "generated", "mined")  # "generated": the bank's n+ ("with" in study.json's arms)
ONLINE = "generated_online"  # with --part-networks-lr: n+ recomposed through the training networks
# the n+ source of each arm when the part networks train (ghns.train_final.part_networks.SOURCES)
NETWORK_SOURCES = {"without": "none", "generated": "stored", ONLINE: "online", "mined": "mined"}


@dataclass(frozen=True)
class Job:
    """One parts classifier to train: an arm, a seed and (for "generated") a bank setting."""

    seed: int
    bank: BankSpec | None  # None: the "without" or the "mined" arm
    arm: str = ""  # "" = "generated" with a bank, else "without"

    @property
    def kind(self) -> str:
        return self.arm or ("without" if self.bank is None else "generated")

    @property
    def name(self) -> str:
        if self.kind == ONLINE:
            return f"online-s{self.seed}"
        if self.kind == "generated":
            assert self.bank is not None
            return f"with-{self.bank.key}-s{self.seed}"
        return f"{self.kind}-s{self.seed}"


def parse_grid(text: str | None, kind: type, name: str) -> list:
    """'0.5,0.9' -> [0.5, 0.9]; a one-line error naming the option for anything else."""
    if text is None or str(text).strip() == "":
        return []
    try:
        values = [kind(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"'{name}' must be a comma-separated list of numbers, got {text!r}") from None
    return values


def plan(seeds: list[int], banks: list[BankSpec], mined: bool = True, online: BankSpec | None = None) -> list[Job]:
    """Every job: the "without" arm once per seed, the "generated" arm per seed and bank, the
    "mined" arm once per seed and, given ``online`` (the main bank; part networks that train),
    the "generated_online" arm once per seed."""
    jobs = [Job(s, None) for s in seeds]
    jobs += [Job(s, b) for b in banks for s in seeds]
    if mined:
        jobs += [Job(s, None, "mined") for s in seeds]
    if online is not None:
        jobs += [Job(s, online, ONLINE) for s in seeds]
    return jobs


def per_class_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most ``n`` rows per class, drawn without replacement by
    ``np.random.default_rng([seed, class])`` (the same rows for every arm and training seed, so
    the arms stay paired; the first ``n`` of a draw for more)."""
    rows = []
    for c in np.unique(labels):
        where = np.nonzero(labels == c)[0]
        rows.append(where[np.random.default_rng([seed, int(c)]).permutation(len(where))[:n]])
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


# -- the Ray Train loop ------------------------------------------------------------------------

def study_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: this worker's share of the jobs, one after another (no DDP: each
    job is a whole classifier; workers split the jobs)."""
    from ghns.train_final.parts import NegativeBank, PartsData, parts_probe
    from ghns.train_parts.table import read_embeddings
    from ghns.train.runner import WorkerContext

    spec, ctx = StudySpec.of(config), WorkerContext(config)
    data = PartsData.read(Path(spec.embeddings))
    if spec.train_per_class:
        keep = per_class_subset(data.train_y.numpy(), spec.train_per_class)
        data.train_x, data.train_y, data.train_ids = data.train_x[keep], data.train_y[keep], data.train_ids[keep]
    meta, emb = read_embeddings(Path(spec.embeddings))
    evaluated = meta["split"].isin(["val", "test"]).to_numpy()
    eval_ids, eval_sets = meta["image_id"].to_numpy()[evaluated], emb[evaluated]
    rejection = dict(np.load(spec.rejection)) if spec.rejection else {}
    dim = data.train_x.shape[1]
    probe = parts_probe(data, spec.num_classes)  # every job starts from the same probe
    train = (_networks_trainer(spec, data, probe, eval_ids) if spec.part_networks
             else _frozen_trainer(spec, data, probe, eval_sets, rejection))
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
        arm = job.get("arm") or ("without" if job["bank"] is None else "generated")
        scores, reject, best = train(job["seed"], arm, bank)
        with atomic_path(out, suffix=".npz") as tmp:  # savez appends .npz otherwise
            np.savez_compressed(tmp, image_id=eval_ids, scores=scores, val_acc=best.acc, epoch_kept=best.epoch,
                                bank_size=len(bank),
                                **{f"reject/{k}": v for k, v in reject.items()})
        print(f"study: {job['name']} done ({i + 1}/{len(jobs)} on worker {ctx.rank}): val top-1 "
              f"{best.acc:.2f}, {time.perf_counter() - t0:.1f} s", flush=True)


def _frozen_trainer(spec: StudySpec, data, probe, eval_sets: np.ndarray, rejection: dict[str, np.ndarray]):
    """``train(seed, arm, bank) -> (eval scores, {rejection set: scores}, KeepBest)``: a head on the
    frozen stage-1 part embeddings (``fit_parts_classifier``)."""
    from ghns.train_final.parts import fit_parts_classifier, parts_softmax

    def train(seed: int, arm: str, bank):
        model, best = fit_parts_classifier(data, bank, spec.parts, spec.num_classes, seed, arm != "without",
                                           source="mined" if arm == "mined" else "generated", probe=probe)
        return (parts_softmax(model, eval_sets), {k: parts_softmax(model, v) for k, v in rejection.items()},
                best)
    return train


def _networks_trainer(spec: StudySpec, data, probe, eval_ids: np.ndarray):
    """The same with the part networks training too (``ghns.train_final.part_networks``): the run's
    part crops (or part-crop trunk outputs) in, each arm's n+ from ``NETWORK_SOURCES``."""
    import torch

    from ghns.data.catalog import Catalog
    from ghns.train_final import part_networks as pn

    assert spec.part_networks is not None
    networks_spec: dict[str, Any] = spec.part_networks
    run = RunDir(networks_spec["run"])
    catalog = Catalog.read(run.catalog)
    networks, settings = pn.stage1_networks(run)
    inputs = pn.read_part_inputs(run, catalog, networks, settings)
    test_x, _ = pn.split_part_inputs(run, catalog, networks, settings, "test")
    ids = np.concatenate([catalog.split(s)["image_id"].to_numpy() for s in ("val", "test")])
    row = {int(i): r for r, i in enumerate(ids)}
    eval_x = torch.cat([inputs.val_x, test_x])[[row[int(i)] for i in eval_ids]]
    crops = dict(np.load(networks_spec["rejection_crops"])) if networks_spec.get("rejection_crops") else {}
    rejection = {k: pn.crop_inputs(networks, torch.from_numpy(v), inputs.cached) for k, v in crops.items()}

    def train(seed: int, arm: str, bank):
        model = pn.start_model(networks, data, spec.parts, spec.num_classes, inputs.cached, probe)
        model, best = pn.fit_with_networks(inputs, model, bank, spec.parts, seed, NETWORK_SOURCES[arm],
                                           networks_spec["lr"])

        def softmax(x: torch.Tensor) -> np.ndarray:
            return pn.predict(model, x, out=lambda logits: logits.softmax(1)).numpy()
        return softmax(eval_x), {k: softmax(v) for k, v in rejection.items()}, best
    return train


# -- the driver --------------------------------------------------------------------------------

@holds_run_lock
def run_study(cfg: Config, seeds: int, tau_grid: list[float] | None = None,
              per_class_grid: list[int] | None = None, out: str | None = None,
              force: bool = False, train_per_class: int = 0, part_networks_lr: float = 0.0) -> dict[str, Any]:
    """Run the study over ``cfg.run_dir`` (running what it needs first); returns study.json.
    ``train_per_class``: the parts classifiers (every arm) see at most that many train images
    per class (0: all), the data-scarce setting; the run's original and object classifiers, which
    the fused figures use, stay as trained. ``part_networks_lr`` > 0: every arm trains its part
    networks too, at that learning rate (stage 3 as the paper trains it), and the arm
    "generated_online" joins."""
    from ghns.data.catalog import Catalog
    from ghns.pipeline import run_until

    _check_arguments(seeds, train_per_class, part_networks_lr)
    run = RunDir(cfg.run_dir)
    if "evaluate" not in run.stages() or not (run.scores / "test.npz").is_file():
        run_until(cfg, "evaluate")
    folder = Path(out) if out else run.path / "study"
    if force:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.read(run.catalog)
    main_bank = BankSpec(cfg.tau, cfg.per_class)
    banks = [BankSpec(t, n) for t in (tau_grid or [cfg.tau]) for n in (per_class_grid or [cfg.per_class])]
    banks = banks if main_bank in banks else [main_bank, *banks]
    folders = bank_folders(cfg, run, folder, banks)
    seed_list = list(range(cfg.seed, cfg.seed + seeds))
    jobs = plan(seed_list, banks, online=main_bank if part_networks_lr else None)
    parts = _parts_config(cfg)
    rejection = _rejection_inputs(cfg, run, catalog)
    digest = _digest({"parts": parts, "inputs": _embeddings_stamp(run),
                      **({"train_per_class": train_per_class} if train_per_class else {}),
                      **({"part_networks_lr": part_networks_lr} if part_networks_lr else {}),
                      **({"rejection": sorted(rejection)} if rejection else {})})
    jobs_dir, rejection_file = _jobs_folder(folder, digest, rejection)
    networks = _networks_settings(cfg, run, catalog, part_networks_lr, bool(rejection))
    todo = [j for j in jobs if not (jobs_dir / f"{j.name}.npz").is_file()]
    start = time.perf_counter()
    if todo:
        log.info("study: %d of %d classifiers to train (%d seeds, %d bank setting(s), arms %s)",
                 len(todo), len(jobs), seeds, len(banks), ", ".join(ARMS + ((ONLINE,) if part_networks_lr else ())))
        _train_jobs(cfg, run, todo, folders, jobs_dir, parts, len(catalog.classes), digest, rejection_file,
                    train_per_class, networks)
    else:
        log.info("study: all %d classifiers trained already", len(jobs))
    scores = {j.name: dict(np.load(jobs_dir / f"{j.name}.npz")) for j in jobs}
    run_scores = {s: dict(np.load(run.scores / f"{s}.npz")) for s in ("val", "test")}
    result = summarize_study(scores, run_scores, seed_list, banks, main_bank, catalog.classes,
                             cfg.fusion_rule, cfg.fusion_step, rejection=rejection)
    result["train_per_class"] = train_per_class or None
    result["settings"] = {"run_dir": str(run.path), "parts": parts, "banks": {
        b.key: {"tau": b.tau, "per_class": b.per_class, "folder": str(folders[b.key])} for b in banks},
        "jobs": str(jobs_dir), "seconds_training": round(time.perf_counter() - start, 1)}
    atomic_write_text(folder / "study.json", json.dumps(result, indent=2))
    atomic_write_text(folder / "study.md", render_study(result))
    study_figure(result, folder / "study.png")
    return result


def _check_arguments(seeds: int, train_per_class: int, part_networks_lr: float) -> None:
    if seeds < 2:
        raise ConfigError(f"'seeds' must be >= 2 (an interval needs several seeds), got {seeds}")
    if train_per_class < 0:
        raise ConfigError(f"'train_per_class' must be >= 0 (0 = every train image), got {train_per_class}")
    if not part_networks_lr >= 0:
        raise ConfigError(f"'part_networks_lr' must be >= 0 (0 = frozen part networks), got {part_networks_lr}")
    if part_networks_lr and train_per_class:
        raise ConfigError("'train_per_class' with trained part networks is not supported: the online arm "
                          "recomposes n+ from train images the capped classifiers would not see")


def _jobs_folder(folder: Path, digest: str, rejection: dict[str, dict[str, np.ndarray]] | None
                 ) -> tuple[Path, Path | None]:
    """The folder of the jobs of these settings, and the rejection images' part embeddings for
    the workers (written once), if the run has unknown images."""
    jobs_dir = folder / "jobs" / digest
    jobs_dir.mkdir(parents=True, exist_ok=True)
    if not rejection:
        return jobs_dir, None
    from ghns.rejection import write_inputs_for_study

    rejection_file = jobs_dir.parent / f"{digest}-rejection-embeddings.npz"
    if not rejection_file.is_file():
        write_inputs_for_study(rejection, rejection_file)
    return jobs_dir, rejection_file


def _rejection_inputs(cfg: Config, run: RunDir, catalog) -> dict[str, dict[str, np.ndarray]] | None:
    """The run's rejection inputs (``ghns.rejection``: known test and unknown images), made here
    where evaluate has not made them; None when the catalog names no unknown images."""
    from ghns.predict import rejection_inputs
    from ghns.evaluate import scores_stamp
    from ghns.train_final.stage import model_names

    return rejection_inputs(run, catalog, {**scores_stamp(run, model_names(cfg)), "kind": "rejection"},
                          progress=not cfg.quiet)


def _networks_settings(cfg: Config, run: RunDir, catalog, lr: float, rejection: bool) -> dict[str, Any] | None:
    """What the workers need to train part networks (None when they stay frozen): the run, the
    learning rate and the rejection images' part crops (made here once)."""
    if not lr:
        return None
    from ghns.evaluate import scores_stamp
    from ghns.predict import rejection_crops
    from ghns.train_final.stage import model_names

    out: dict[str, Any] = {"run": str(run.path.resolve()), "lr": lr}
    if rejection:
        rejection_crops(run, catalog, {**scores_stamp(run, model_names(cfg)), "kind": "rejection"},
                        progress=not cfg.quiet)
        out["rejection_crops"] = str((run.path / "rejection" / "crops.npz").resolve())
    return out


def _parts_config(cfg: Config) -> dict[str, Any]:
    from dataclasses import asdict

    from ghns.train_final.parts import PartsSettings

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
    from ghns.generate.stage import generator_settings, prepare_bank, write_bank

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
                parts: dict[str, Any], num_classes: int, digest: str, rejection: Path | None = None,
                train_per_class: int = 0, networks: dict[str, Any] | None = None) -> None:
    from ghns.train_final.parts import PartsSettings
    from ghns.train.runner import fit

    name = f"study_{digest}"
    shutil.rmtree(run.path / "ray" / name, ignore_errors=True)  # resumption is per job, not per epoch
    jobs = [{"name": j.name, "seed": j.seed, "arm": j.kind,
             "bank": None if j.bank is None else {"key": j.bank.key, "per_class": j.bank.per_class,
                                                  "folder": str(folders[j.bank.key].resolve())}}
            for j in todo]
    spec = StudySpec(parts=PartsSettings.from_dict(parts), embeddings=str(run.embeddings.resolve()),
                     jobs_dir=str(jobs_dir.resolve()), num_classes=num_classes, jobs=jobs,
                     rejection=str(rejection.resolve()) if rejection else None, train_per_class=train_per_class,
                     part_networks=networks)
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
    return {"parts": parts_test.argmax(1), "fused": fused.argmax(1), "fusion": fusion.describe(),
            "rule": fusion}


def summarize_study(scores: dict[str, dict[str, np.ndarray]], run_scores: dict[str, dict[str, np.ndarray]],
                    seeds: list[int], banks: list[BankSpec], main: BankSpec, class_names: list[str],
                    rule: str = "loglinear", step: float = 0.05, n_boot: int = 10_000,
                    rejection: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """study.json from the jobs' scores and the run's val/test scores (see the module doc)."""
    from ghns.rejection import KINDS, confidences
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
    arm_names = {"without": without, "generated": f"with-{main.key}-s{{seed}}"}
    for arm, name in (("mined", "mined-s{seed}"), (ONLINE, "online-s{seed}")):
        if all(name.format(seed=s) in scores for s in seeds):
            arm_names[arm] = name
            result["arms"][arm] = {w: top1(correct(name, w)) for w in ("parts", "fused")}
    vs: dict[str, dict[str, Any]] = {
        arm: {which: {k: boot[k] for k in ("mean", "ci95")} for which in ("parts", "fused")
              for boot in [paired_bootstrap(correct(arm_names[arm], which), correct(without, which), n_boot=n_boot)]}
        for arm in ("generated", ONLINE, "mined") if arm in arm_names}
    if rejection and any(k in rejection for k in KINDS):
        def job_confidences(job: str) -> dict[str, dict[str, np.ndarray]]:  # from the job's saved parts scores
            return confidences(rejection, lambda name, _: scores[job][f"reject/{name}"], preds[job]["rule"])

        conf = {arm: [job_confidences(name.format(seed=s)) for s in seeds] for arm, name in arm_names.items()}
        result.update(_rejection_summary(conf, rejection, vs, min(n_boot, 2000)))
    result["vs_without"] = vs
    result["summary"] = {arm: {w: mean_std(v) for w, v in vals.items()} for arm, vals in result["arms"].items()}
    result["grid"] = grid
    pair = (("with", arm_names["generated"]), ("without", without))
    result["fusion"] = {arm: [preds[name.format(seed=s)]["fusion"] for s in seeds] for arm, name in pair}
    result["confused_pairs"] = confused_pair_errors(
        {arm: [preds[name.format(seed=s)]["fused"] for s in seeds] for arm, name in pair}, labels, class_names)
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


def _rejection_summary(conf: dict[str, list[dict[str, dict[str, np.ndarray]]]],
                       rejection: dict[str, dict[str, np.ndarray]], vs: dict[str, dict[str, Any]],
                       n_boot: int) -> dict[str, Any]:
    """``rejection`` (each arm's per-seed AUROCs, test and val) and ``rejection_images`` of
    study.json; adds each arm's AUROC minus "without" (fused and parts) to ``vs``."""
    from ghns.rejection import KINDS
    from ghns.stats import auroc, paired_auroc_bootstrap

    kinds = [k for k in KINDS if k in rejection]
    out: dict[str, Any] = {arm: {f"{k}_auroc": {w: [round(auroc(c["known"][w], c[k][w]), 4) for c in per_seed]
                                                for w in ("parts", "fused")} for k in kinds}
                           for arm, per_seed in conf.items()}
    for arm, per_seed in conf.items():  # the same on val, where a choice between settings is made
        for k in kinds:
            if f"{k}_val" in rejection and "known_val" in rejection:
                out[arm][f"{k}_auroc_val"] = {w: [round(auroc(c["known_val"][w], c[f"{k}_val"][w]), 4)
                                                  for c in per_seed] for w in ("parts", "fused")}
    for arm in vs:
        for k in kinds:
            for w, key in (("fused", f"{k}_auroc"), ("parts", f"{k}_auroc_parts")):
                boot = paired_auroc_bootstrap(
                    np.stack([c["known"][w] for c in conf[arm]]), np.stack([c[k][w] for c in conf[arm]]),
                    np.stack([c["known"][w] for c in conf["without"]]), np.stack([c[k][w] for c in conf["without"]]),
                    n_boot=n_boot)
                vs[arm][key] = {"mean": boot["mean"], "ci95": boot["ci95"]}
    return {"rejection": out, "rejection_images": {name: int(len(d["original"])) for name, d in rejection.items()}}


def render_study(result: dict[str, Any]) -> str:
    lines = _render_paired(result) + _render_arms(result) + _render_seeds_and_grid(result)
    if result.get("confused_pairs"):
        lines += ["", "Most confused class pairs (fused, test errors per seed):", "",
                  "| classes | with | without |", "| --- | --- | --- |"]
        lines += [f"| {p['classes'][0]} / {p['classes'][1]} | {p['with']} | {p['without']} |"
                  for p in result["confused_pairs"]]
    return "\n".join(lines) + "\n"


def _render_paired(result: dict[str, Any]) -> list[str]:
    s, seeds = result["summary"], result["seeds"]
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
    return lines


def _render_arms(result: dict[str, Any]) -> list[str]:
    """The arms against "without" (top-1 and AUROC) and the AUROC of each arm."""
    lines: list[str] = []
    vs = result.get("vs_without") or {}
    if vs:
        metrics = [m for m in ("parts", "fused", "near_miss_auroc", "near_miss_auroc_parts", "open_set_auroc",
                               "open_set_auroc_parts") if any(m in v for v in vs.values())]
        lines += ["", "Each arm minus the arm without hard negatives, paired (top-1 in points; AUROC "
                  "of known test images against unknown ones by the maximum softmax score, fused unless "
                  "'_parts'), 95% interval from a two-way bootstrap over seeds and images:", "",
                  "| arm | " + " | ".join(metrics) + " |", "| --- |" + " --- |" * len(metrics)]
        for arm, v in vs.items():
            cells = [f"{v[m]['mean']:+.4g} [{v[m]['ci95'][0]:+.4g}, {v[m]['ci95'][1]:+.4g}]" if m in v else "-"
                     for m in metrics]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if result.get("rejection"):
        kinds = list(next(iter(result["rejection"].values())))
        lines += ["", "AUROC per arm, mean +- std over seeds (parts / fused):", "",
                  "| arm | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
        for arm, per_kind in result["rejection"].items():
            cells = []
            for vals in per_kind.values():
                a, b = np.asarray(vals["parts"]), np.asarray(vals["fused"])
                cells.append(f"{a.mean():.4f} +- {a.std(ddof=1) if len(a) > 1 else 0:.4f} / "
                             f"{b.mean():.4f} +- {b.std(ddof=1) if len(b) > 1 else 0:.4f}")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if "mined" in result["arms"]:
        m = result["summary"]["mined"]
        lines += ["", f"Mined negatives (n+ the batch-hard negative, n the nearest of a third class): parts "
                      f"{m['parts']['mean']} +- {m['parts']['std']}, fused {m['fused']['mean']} +- {m['fused']['std']}."]
    return lines


def _render_seeds_and_grid(result: dict[str, Any]) -> list[str]:
    seeds, arms = result["seeds"], result["arms"]
    lines = ["", f"Main bank: {result['main_bank']}.", "", "Per seed (parts with / without; fused with / without):", ""]
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
    return lines


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
