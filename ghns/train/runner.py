"""Ray Train V2 around a plain ``train_loop_per_worker``: one path for 1 CPU worker or N GPUs,
and the same loop in this process where Ray Train would only add its start-up.

``fit`` builds a ``TorchTrainer`` whose run state lives in ``<run_dir>/ray/<name>``. A worker
that dies is restarted from the last reported checkpoint (``FailureConfig``), and calling
``fit`` again with the same name after an interrupted run resumes from that checkpoint too
(Train V2 restores the run from its storage), so at most ``WorkerSpec.report_seconds`` of finished epochs
are trained twice. For one CPU worker on a local Ray (``trains_locally``) ``fit`` calls the
loop here instead, with the same settings; its checkpoint is ``<run_dir>/ray/<name>/state.pt``,
written as often as Ray Train's would be, and restarts and resumption follow the same rules.
``fit_all`` runs several loops one after another in one such run (stage 3's classifiers: one
start-up), each with its own history and checkpoints.

Loops use ``WorkerContext`` for what differs between the worlds: rank, world size, device,
checkpoint save/restore and metric reporting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ghns.checkpoint import load_checkpoint
from ghns.errors import GHNSError
from ghns.atomic import atomic_write_text, save_torch
from ghns.train.specs import Spec, WorkerSpec, to_loop_config, worker_of

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
USER_ERROR_FILE = "ghns_error.json"  # a worker's GHNSError, for the driver to raise as its own


@dataclass
class FitResult:
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


def fit(loop: Callable[[dict], None], spec: Spec | dict[str, Any], cfg: Config, name: str,
        history_file: Path | None = None, **worker: Any) -> FitResult:
    """Run ``loop`` on ``cfg.workers`` Ray Train workers, or in this process where
    ``trains_locally`` says so, with ``spec`` (the loop's settings: a ``Spec``, or a plain dict
    for tests' own loops) and the runner's settings (``WorkerSpec``: ``history_file``,
    ``epochs``, and for tests ``report_seconds`` or fault injection); return the last metrics
    and the history. Either way the run's state lives in ``<run_dir>/ray/<name>``, and calling
    ``fit`` again after an interruption resumes from its last checkpoint."""
    (result,) = fit_all([FitJob(loop, spec, name, history_file)], cfg, name, **worker)
    return result


@dataclass(frozen=True)
class FitJob:
    """One training run of ``fit_all``: its loop, settings, name (of its progress lines and its
    local checkpoint folder), history file and the file it writes when it is done (a job whose
    ``output`` exists is not run again)."""

    loop: Callable[[dict], None]
    spec: Spec | dict[str, Any]
    name: str
    history_file: Path | None = None
    output: Path | None = None
    epochs: int | None = None


def fit_all(jobs: list[FitJob], cfg: Config, name: str, **worker: Any) -> list[FitResult]:
    """``fit`` of several loops one after another in one run: under Ray Train one worker group
    (one start-up, about 12 s here) trains them all, in ``<run_dir>/ray/<name>``. A restarted or
    resumed run skips the jobs whose ``output`` exists and resumes the one it was in from its
    checkpoint (checkpoints carry their job's name; another job's starts it afresh)."""
    from ghns.raykit import resolve_device, torch_threads_for

    local = trains_locally(cfg)
    storage = Path(cfg.run_dir).expanduser().resolve() / "ray"
    (storage / name).mkdir(parents=True, exist_ok=True)
    if not local:
        from ghns.raykit import ensure_ray

        ensure_ray(cfg)
    device = resolve_device(cfg)
    error_file = storage / name / USER_ERROR_FILE
    error_file.unlink(missing_ok=True)
    histories: list[Path] = []
    configs: list[dict[str, Any]] = []
    for job in jobs:
        history = Path(job.history_file).resolve() if job.history_file else storage / job.name / "history.json"
        settings = WorkerSpec(**{"device": device, "error_file": str(error_file), "run_name": job.name,
                                 "amp": getattr(cfg, "amp", True),
                                 "progress": not getattr(cfg, "quiet", False),
                                 "torch_threads": torch_threads_for(cfg.workers),
                                 "history_file": str(history),
                                 "checkpoint_file": str(storage / job.name / CHECKPOINT_FILE) if local else None,
                                 "ray_storage": str(storage / name),
                                 **({"epochs": job.epochs} if job.epochs is not None else {}), **worker})
        histories.append(history)
        configs.append({"loop": f"{job.loop.__module__}:{job.loop.__qualname__}", "config": to_loop_config(job.spec, settings),
                        "output": str(job.output) if job.output else None})
    if len(jobs) == 1 and jobs[0].output is None:
        loop, loop_config = jobs[0].loop, configs[0]["config"]
    else:
        loop = sequence_loop
        loop_config = {"jobs": configs, **to_loop_config({}, WorkerSpec(error_file=str(error_file)))}
    if local:
        _fit_here(loop, loop_config, cfg.max_failures, name)
    else:
        _fit_ray_train(loop, loop_config, cfg, device, storage, name, error_file)
    results = []
    for history in histories:
        found = json.loads(history.read_text()) if history.is_file() else []
        results.append(FitResult(dict(found[-1]) if found else {}, found))
    return results


def sequence_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of ``fit_all``: each job whose output does not exist yet (as this
    attempt starts: every worker sees the same files), in order, with its own settings."""
    import importlib

    pending = [job for job in config["jobs"] if not (job["output"] and Path(job["output"]).is_file())]
    for job in pending:
        module, qualname = job["loop"].split(":")
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
        found(job["config"])


def trains_locally(cfg: Config) -> bool:
    """Whether ``fit`` runs the loop in this process: ``--trainer local``, or ``auto`` with one
    CPU worker on a Ray this process starts itself (no cluster address; if Ray is running, one
    node) outside a Tune trial.
    Ray Train's start-up (a controller and a worker group, the worker importing torch) costs
    about 12 s a run here, more than many loops' training; the loop, its checkpoints and its
    resumption are the same."""
    if cfg.trainer != "auto":
        return cfg.trainer == "local"
    if cfg.workers != 1 or getattr(cfg, "ray_address", None) or os.environ.get("RAY_ADDRESS"):
        return False
    if _tune_callbacks():  # inside a Tune trial: its reports go through Ray Train to Tune
        return False
    from ghns.raykit import cluster_nodes, resolve_device

    return resolve_device(cfg) == "cpu" and cluster_nodes() <= 1


class WorkerFailure(RuntimeError):
    """Fault injection (tests) in a local run: what a dying Ray Train worker is to Ray Train."""


def _fit_here(loop: Callable[[dict], None], loop_config: dict[str, Any], max_failures: int,
              name: str) -> None:
    """``loop`` in this process, restarted from its last checkpoint after a failure (not after a
    ``GHNSError``, a user mistake that would fail again) up to ``max_failures`` times, as Ray
    Train's ``FailureConfig`` does; this process's torch threads are left as they were."""
    threads = torch.get_num_threads()
    try:
        for attempt in range(max_failures + 1):
            try:
                loop(loop_config)
                return
            except GHNSError:
                raise
            except Exception as exc:  # noqa: BLE001 - a worker failure: restart, as Ray Train does
                if attempt == max_failures:
                    raise
                log.warning("%s: %s: %s; restarting from the last checkpoint (%d of %d)", name,
                            type(exc).__name__, exc, attempt + 1, max_failures)
    finally:
        torch.set_num_threads(threads)


def _fit_ray_train(loop: Callable[[dict], None], loop_config: dict[str, Any], cfg: Config, device: str,
                   storage: Path, name: str, error_file: Path) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cpus = 1.0 if device == "cuda" else max(1.0, float(os.cpu_count() or 1) // max(1, cfg.workers))
    trainer = TorchTrainer(
        _stops_on_user_errors(loop),
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=device == "cuda",
                                               resources_per_worker={"CPU": cpus}),
        torch_config=TorchConfig(backend=torch_backend(device)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Train logs every report and checkpoint at INFO; the stages log their own progress.
            logging_config=ray.train.LoggingConfig(  # type: ignore[call-arg]  # Train V2's RunConfig
                log_level=os.environ.get("GHNS_TRAIN_LOG_LEVEL", "WARNING")),
            callbacks=_tune_callbacks()),
    )
    try:
        result = trainer.fit()
    except Exception:
        _raise_user_error(error_file)  # a GHNSError from a worker: its one line, not Ray's wrapping
        raise
    _raise_user_error(error_file)
    if result.error is not None:  # pragma: no cover - Train V2 raises before this
        raise result.error


def _stops_on_user_errors(loop: Callable[[dict], None]) -> Callable[[dict], None]:
    """``loop`` as a Ray Train function whose ``GHNSError`` (a user mistake: it would fail the
    same way again) is written to the worker settings' ``error_file`` for the driver, and whose
    restart after one returns at once: the retries Ray Train spends on it redo no work."""

    def run(config: dict) -> None:
        error_file = worker_of(config).error_file
        marker = Path(error_file) if error_file else None
        if marker is not None and marker.is_file():
            return
        try:
            loop(config)
        except GHNSError as exc:
            if marker is not None:
                atomic_write_text(marker, json.dumps({"type": type(exc).__name__, "message": str(exc)}))
            raise

    return run


def _raise_user_error(error_file: Path) -> None:
    if not error_file.is_file():
        return
    from ghns import errors

    found = json.loads(error_file.read_text())
    kind = getattr(errors, found.get("type", ""), None)
    kind = kind if isinstance(kind, type) and issubclass(kind, GHNSError) else GHNSError
    raise kind(found["message"]) from None


def _quiet_ray_train_worker() -> None:
    """Ray Train logs every report and checkpoint at INFO from the worker, through loggers that
    its LoggingConfig does not reach (one is named by file path); keep their warnings only."""
    level = os.environ.get("GHNS_TRAIN_LOG_LEVEL", "WARNING")
    try:
        from ray.train.v2._internal.execution import context, storage
    except ImportError:  # pragma: no cover - another Ray layout
        return
    for name in (context.__file__, storage.__name__, "ray.train"):
        logging.getLogger(name).setLevel(level)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 in hardware (the ``avx512_bf16`` or ``amx_bf16`` flag of
    Linux's ``/proc/cpuinfo``, or ``cpuinfo``'s text): there bf16 autocast ran the synthetic
    default's epochs 1.15-1.3x faster (docs/speed.md, Speed of the default); elsewhere oneDNN would
    emulate it, slower than float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def torch_backend(device: str) -> str:
    """NCCL where workers really have CUDA; gloo otherwise (CPU, or logical GPUs in tests)."""
    return "nccl" if device == "cuda" and torch.cuda.is_available() else "gloo"


def _tune_callbacks() -> list:
    """Inside a Ray Tune trial, forward every report to Tune (so ASHA sees each epoch)."""
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session
    except ImportError:  # pragma: no cover - ray[tune] missing
        return []
    if not _in_tune_session():
        return []
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def ray_train_checkpoint(storage: Path) -> Path | None:
    """The last checkpoint Ray Train registered in its run folder ``storage``, if any: a run
    interrupted under Ray Train resumes from it in a local run (``trains_locally``). Read from
    Train V2's own record of its checkpoints (``checkpoint_manager_snapshot.json``)."""
    try:
        snapshot = json.loads((storage / "checkpoint_manager_snapshot.json").read_text())
        found = storage / snapshot["latest_checkpoint_result"]["checkpoint_dir_name"] / CHECKPOINT_FILE
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if found.is_file() else None


class WorkerContext:
    """What a loop needs from Ray Train, usable outside Ray too (``in_ray=False``) for tests."""

    def __init__(self, config: dict[str, Any] | WorkerSpec) -> None:
        """``config``: a loop config (``ghns.train.specs.to_loop_config``) or the runner's
        settings themselves."""
        import ray.train

        self.settings = config if isinstance(config, WorkerSpec) else worker_of(config)
        self.in_ray = True
        try:
            ctx = ray.train.get_context()
            self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        except Exception:  # noqa: BLE001 - not inside a Ray Train worker
            self.in_ray, self.rank, self.world = False, 0, 1
        if self.settings.device == "cuda" and torch.cuda.is_available():
            import ray.train.torch as rtt

            self.device = rtt.get_device() if self.in_ray else torch.device("cuda")
        else:
            self.device = torch.device("cpu")
            if self.settings.torch_threads:
                torch.set_num_threads(int(self.settings.torch_threads))
        self.amp = self.settings.amp and (self.device.type == "cuda" or cpu_has_native_bf16())
        self.history_file = self.settings.history_file
        _quiet_ray_train_worker()
        self.epochs = self.settings.epochs
        self.report_seconds = float(self.settings.report_seconds)
        self._last_report = time.monotonic()
        self.progress = self.settings.progress
        self.run_name = self.settings.run_name
        self._epoch_clock = time.monotonic()

    def autocast(self, cached: bool = False) -> Any:
        """bf16 autocast on this worker's device when it trains in it (``amp``), else nothing.

        ``cached``: the step's inputs are stored frozen-trunk outputs (the localizer's heads and
        the part networks over a pretrained backbone). These stay float32: they are small, bf16
        bought almost nothing there (cub50-dev: the localizer's 40 epochs 13.7 s in bf16 against
        22.2 s, the part networks' 37.9 s both ways) and its rounding moved the localizer's boxes
        by pixels, and with them a few test images of every classifier after it (docs/speed.md)."""
        if not self.amp or cached:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This worker's share of ``n`` items, interleaved (``rank::world``): catalogs are ordered
        by class, so a contiguous share would give each worker a block of classes."""
        return slice(self.rank, n, self.world)

    def common_steps(self, n: int) -> int:
        """The number of training steps every worker takes this epoch: the fewest any worker has
        (``n`` is this worker's). Shards differ by an item, and P-K batches by more, while every
        DDP step is a collective: a worker with an extra step would wait forever."""
        if self.world > 1 and torch.distributed.is_initialized():
            steps = torch.tensor([n], device=self.device)
            torch.distributed.all_reduce(steps, op=torch.distributed.ReduceOp.MIN)
            return int(steps.item())
        return n

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move to the device; DistributedDataParallel when there are several workers."""
        model = model.to(self.device)
        if self.in_ray and self.world > 1:
            import ray.train.torch as rtt

            return rtt.prepare_model(model, move_to_device=False,
                                     parallel_strategy_kwargs={"find_unused_parameters": True})
        return model

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over workers (identity with one worker)."""
        if self.world > 1 and torch.distributed.is_initialized():
            values = values.to(self.device)
            torch.distributed.all_reduce(values)
        return values.cpu()

    def restore(self) -> dict[str, Any] | None:
        """The state of the last reported checkpoint, or None on a fresh start. Every start is
        appended to ``<history_file>.starts`` (the epoch it starts from), so a resumed run shows."""
        state = None
        local = self.settings.checkpoint_file
        if not self.in_ray and local:
            found = local if Path(local).is_file() else ray_train_checkpoint(
                Path(self.settings.ray_storage or Path(local).parent))
            state = load_checkpoint(found) if found else None
        if self.in_ray:
            import ray.train

            checkpoint = ray.train.get_checkpoint()
            if checkpoint is not None:
                with checkpoint.as_directory() as d:
                    state = load_checkpoint(Path(d) / CHECKPOINT_FILE)
        if state is not None and state.get("run", self.run_name) != self.run_name:
            state = None  # another job's of the same run (``fit_all``): this one starts afresh
        if self.is_main and self.history_file:
            starts = Path(str(self.history_file) + ".starts")
            starts.parent.mkdir(parents=True, exist_ok=True)
            with starts.open("a") as fh:
                fh.write(json.dumps({"start_epoch": 0 if state is None else state["epoch"] + 1}) + "\n")
        return state

    def fail_once(self, epoch: int) -> None:
        """Fault injection for tests of resumption: with ``fail_once_at_epoch`` in the loop config,
        the main worker dies (hard exit) at the start of that epoch, once (a marker file remembers)."""
        at, marker = self.settings.fail_once_at_epoch, self.settings.fail_marker
        if at is None or epoch != at or not self.is_main or not marker or Path(marker).exists():
            return
        Path(marker).write_text("failed once")
        if not self.in_ray:  # a local run: the loop's failure, for the runner to restart
            raise WorkerFailure(f"injected failure at epoch {epoch}")
        os._exit(1)

    def _progress_line(self, metrics: dict[str, Any]) -> None:
        """One console line per epoch from the main worker (``progress`` in the loop config):
        loss, up to three validation figures, the epoch's seconds and the time left."""
        if not (self.progress and self.is_main):
            return
        now = time.monotonic()
        took, self._epoch_clock = now - self._epoch_clock, now
        epoch = int(metrics.get("epoch", 0))
        line = [f"{self.run_name}: epoch {epoch + 1}" + (f"/{self.epochs}" if self.epochs else "")]
        if isinstance(metrics.get("loss"), float):
            line.append(f"loss {metrics['loss']:.4f}")
        line += [f"{k} {v:.2f}" for k, v in metrics.items()
                 if k.startswith("val_") and isinstance(v, (int, float)) and v == v][:3]
        line.append(f"{took:.1f} s")
        if metrics.get("early_stop"):
            line.append(f"stopping early: {metrics['early_stop']} epochs without replacing the kept weights")
        elif self.epochs:
            left = max(0, int(self.epochs) - epoch - 1) * took
            line.append(f"about {int(left // 60)} min {int(left % 60)} s left")
        # Ray Train's print patch both tees a print to the worker's stdout and logs it (every line
        # twice on the console); writing to the process's own stdout passes it by, once
        stream = sys.__stdout__ if self.in_ray and sys.__stdout__ is not None else sys.stdout
        print("  ".join(line), file=stream, flush=True)

    def _due(self, metrics: dict[str, Any]) -> bool:
        """Whether this epoch goes to Ray Train: the last epoch, and otherwise at most one every
        ``report_seconds``. Each report waits for the controller to collect it (a second or two),
        which dominated loops whose epochs take a fraction of a second (the parts classifier:
        5 s of training, 2 min of reporting). Workers agree (any due -> all report)."""
        final = (self.epochs is None or metrics.get("epoch") == int(self.epochs) - 1
                 or bool(metrics.get("early_stop")))
        due = final or time.monotonic() - self._last_report >= self.report_seconds
        if self.world > 1 and torch.distributed.is_initialized():
            due = bool(self.all_reduce(torch.tensor([float(due)])).item() > 0)
        return due

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        """Record epoch metrics in the history file; report them to Ray Train (with a checkpoint
        of ``state`` from the main worker) when due (see ``_due``): a restarted worker resumes
        from the last reported epoch, so at most ``report_seconds`` of work is redone."""
        self._progress_line(metrics)
        if self.is_main and self.history_file:
            path = Path(self.history_file)
            history = json.loads(path.read_text()) if path.is_file() else []
            history = [h for h in history if h.get("epoch") != metrics.get("epoch")] + [metrics]
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(history, indent=1))
        if not self.in_ray:
            self._save_local(metrics, state)
            return
        if not self._due(metrics):
            return
        import ray.train

        self._last_report = time.monotonic()
        if state is not None and self.is_main:
            with tempfile.TemporaryDirectory() as d:
                save_torch({**state, "run": self.run_name}, Path(d) / CHECKPOINT_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    def _save_local(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        """A local run's checkpoint (``checkpoint_file``), when due as a Ray Train report would be."""
        target = self.settings.checkpoint_file
        if not target or state is None or not self._due(metrics):
            return
        from ghns.rundir import atomic_path

        self._last_report = time.monotonic()
        with atomic_path(target, suffix=".pt") as tmp:
            save_torch(state, tmp)
