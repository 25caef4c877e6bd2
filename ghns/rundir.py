"""The run directory: where every stage reads its inputs and writes its outputs.

A stage is done when its outputs exist and ``stages.json`` records it with the fingerprint of
the configuration it ran under (the config keys it depends on). Running a done stage again is a
skip; running it under a different fingerprint is an error that names the differing keys, unless
``force`` (then it runs again and later stages are marked stale).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ghns import stages as _stages
from ghns.atomic import atomic_path, atomic_write_text, check_format, read_json, remove_temporaries, temporary_name  # noqa: F401 - re-exported
from ghns.errors import GHNSError, StageError

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)

# Stages in pipeline order, with the config sections each one depends on (its own and upstream):
# from the stage registry (``ghns.stages``).
STAGES = _stages.NAMES
STAGE_SECTIONS = {name: _stages.sections(name) for name in STAGES}


# The key of stages.json recording the settings of stages under way (begun, not finished), for
# the stages whose interrupted work a rerun resumes (Ray Train checkpoints, finished models and
# bank shards); the others redo everything when rerun.
PARTIAL = "_partial"
RESUMABLE = tuple(s.name for s in _stages.STAGES if s.resumable)
# The key of stages.json listing resumable stages whose leftover work (checkpoints, models) was
# made from inputs an earlier stage has since replaced: they start over instead of resuming.
STALE = "_stale"

# Stages that only read what earlier stages made and take seconds: changed settings re-run them
# instead of being refused (e.g. fixed fusion weights from a sweep).
REDO_ON_CHANGE = tuple(s.name for s in _stages.STAGES if s.redo_on_change)


# The layout version of the run directory, kept in stages.json under FORMAT_KEY (runs without it
# are format 1). A run written by a newer ghns is refused in one line rather than misread.
RUN_FORMAT = 1
FORMAT_KEY = "_format"

# Stage names of run directories made before each stage had one name (its CLI command).
LEGACY = {"stage1": "train-parts", "stage3": "train-final"}


def _renamed(stages: dict[str, Any]) -> dict[str, Any]:
    """``stages.json`` with ``LEGACY`` stage names replaced by today's."""
    out = {LEGACY.get(k, k): v for k, v in stages.items()}
    if isinstance(out.get(PARTIAL), dict):
        out[PARTIAL] = {LEGACY.get(k, k): v for k, v in out[PARTIAL].items()}
    if isinstance(out.get(STALE), list):
        out[STALE] = [LEGACY.get(k, k) for k in out[STALE]]
    return out


class _Path:
    """A path in the run directory (a ``RunDir`` attribute): ``name``, or where an older run
    directory has it under its ``before`` name (stages named ``stage1`` / ``stage3``, ``LEGACY``)
    and not under ``name``, that one: a run keeps the layout it was made with."""

    def __init__(self, name: str, before: str | None = None) -> None:
        self.name, self.before = name, before

    def __get__(self, run: "RunDir | None", owner: type | None = None) -> Path:
        if run is None:  # the attribute of the class itself
            return self  # type: ignore[return-value]
        path = run.path / self.name
        if self.before is not None and not path.exists() and (run.path / self.before).exists():
            return run.path / self.before
        return path


class RunLocked(GHNSError):
    """Another process holds the run directory's lock."""


# Locks this process holds: resolved run path -> [open lock file, depth] (re-entrant).
_HELD: dict[str, list] = {}


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    # -- one writer at a time ---------------------------------------------------------------
    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run directory's exclusive lock (``fcntl.flock`` on ``.lock``) for the block.

        A second process gets ``RunLocked`` at once, naming the holder (pid, host, command, since
        when). The kernel drops the lock when its holder exits, however it exits, so a killed run
        never leaves a stale lock. Re-entrant within a process. On a shared mount (NFS, EFS) it
        holds across nodes as far as the mount supports ``flock``.
        """
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield
            finally:
                _HELD[key][1] -= 1
            return
        handle = open(self.lock_file, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLocked(f"{self.path} is in use by {holder}; wait for it to finish or use "
                            f"another --run-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} "
                     f"({' '.join(['ghns', *sys.argv[1:3]]) if sys.argv else 'python'}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        _HELD[key] = [handle, 1]
        left = remove_temporaries(self.path)  # an interrupted writer's, now that none can run
        if left:
            log.info("%s: removed %d temporary file(s) of an interrupted run (first: %s)", self.path, len(left), left[0])
        try:
            yield
        finally:
            del _HELD[key]
            handle.close()  # releases the lock; the holder line stays as a record

    # -- well-known paths (``_Path``) ------------------------------------------------------
    config = _Path("config.yaml")
    catalog = _Path("catalog.parquet")
    localization = _Path("localization.parquet")
    localization_json = _Path("localization.json")
    train_parts = _Path("train-parts", before="stage1")  # part networks, FilterNet, history
    train_parts_json = _Path("train-parts.json", before="stage1.json")
    embeddings = _Path("embeddings.parquet")
    negatives = _Path("negatives")
    generate_json = _Path("generate.json")
    train_final = _Path("train-final", before="stage3")  # the classifiers and their histories
    train_final_json = _Path("train-final.json", before="stage3.json")
    scores = _Path("scores")
    trunks = _Path("trunks")  # frozen-trunk outputs, once per run (ghns.trunks)
    report_json = _Path("report.json")
    report_md = _Path("report.md")
    figures = _Path("figures")
    stages_file = _Path("stages.json")

    @property
    def part_networks(self) -> Path:
        return self.train_parts / "parts.pt"

    @property
    def filternet(self) -> Path:
        return self.train_parts / "filternet.pt"

    # -- stage bookkeeping ------------------------------------------------------------------
    def stages(self) -> dict[str, Any]:
        """``stages.json``: each done stage's record, under the stages' names (``LEGACY`` names of
        older run directories are read as today's)."""
        if not self.stages_file.is_file():
            return {}
        stages = read_json(self.stages_file)
        check_format(self.stages_file, "run directory", stages.pop(FORMAT_KEY, 1), RUN_FORMAT)
        return _renamed(stages)

    def write_stages(self, stages: dict[str, Any]) -> None:
        atomic_write_text(self.stages_file, json.dumps({**stages, FORMAT_KEY: RUN_FORMAT}, indent=2, sort_keys=True))

    def begin(self, cfg: Config, name: str, force: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A stage's common start (``ghns.stages``): the files it needs exist (else one line naming
        them and the command that makes them), its fingerprint, and its figures when its output
        exists and it is done already with this fingerprint; None otherwise."""
        stage = _stages.stage(name)
        needs = [getattr(self, attr) for attr in stage.needs]
        if not all(Path(p).is_file() for p in needs):
            made_by = _stages.before(stage.name)
            raise StageError(f"{' or '.join(str(p) for p in needs)} is missing: "
                             f"{made_by.hint if made_by else 'run ghns pipeline'}")
        fp = fingerprint(cfg, stage.name)
        output = getattr(self, stage.writes)
        if output.is_file() and self.is_done(stage.name, fp, force):
            log.info("%s: done already (%s)", stage.name, output)
            return fp, read_json(getattr(self, stage.figures)) if stage.figures else {}
        return fp, None

    def is_done(self, stage: str, fingerprint: dict[str, Any], force: bool = False) -> bool:
        """Whether ``stage`` can be skipped; a done stage with another fingerprint is an error."""
        record = self.stages().get(stage)
        if record is None or force:
            return False
        old = record.get("fingerprint", {})
        keys = changed_keys(old, fingerprint)
        if keys and stage in REDO_ON_CHANGE:
            log.info("%s: settings changed (%s): running it again", stage, ", ".join(keys))
            return False
        if keys:
            changes = ", ".join(f"{k}: {recorded_value(old, k)!r} -> {fingerprint.get(k)!r}"
                                for k in keys[:4])
            raise StageError(f"{self.path} already holds stage '{stage}' run with other settings "
                             f"({changes}); pass --force to redo it or use another --run-dir")
        return True

    def check_partial(self, stage: str, fingerprint: dict[str, Any], force: bool = False) -> None:
        """Refuse to continue ``stage``'s interrupted work under other settings than it began with
        (it would resume their checkpoints and record the new settings); ``force`` starts over."""
        began = self.stages().get(PARTIAL, {}).get(stage)
        if began is None or force or stage not in RESUMABLE or self.starts_over(stage):
            return
        keys = changed_keys(began, fingerprint)
        if keys:
            changes = ", ".join(f"{k}: {recorded_value(began, k)!r} -> {fingerprint.get(k)!r}"
                                for k in keys[:4])
            raise StageError(f"{self.path} holds interrupted work of stage '{stage}' begun with "
                             f"other settings ({changes}); rerun with those settings to resume it, "
                             f"or pass --force to start it over")

    def starts_over(self, stage: str, force: bool = False) -> bool:
        """Whether ``stage`` must discard its leftover work: forced, or made stale by an earlier
        stage that ran again since (its checkpoints would resume work on the old inputs)."""
        return force or stage in self.stages().get(STALE, [])

    @contextmanager
    def stage(self, name: str, fingerprint: dict[str, Any], force: bool = False) -> Iterator[dict[str, Any]]:
        """Run a stage: its settings are recorded as partial work before it starts (see
        ``check_partial``); on success it is recorded with its fingerprint and wall time, and
        later stages that were done become stale (removed from the record) since their inputs
        changed."""
        if name in RESUMABLE:
            self.check_partial(name, fingerprint, force)
            stages = self.stages()
            stages.setdefault(PARTIAL, {})[name] = fingerprint
            stages[STALE] = [s for s in stages.get(STALE, []) if s != name]  # it started over
            if not stages[STALE]:
                stages.pop(STALE)
            self.write_stages(stages)
        log.info("%s: started", name)
        start = time.perf_counter()
        extra: dict[str, Any] = {}
        yield extra
        stages = self.stages()
        for later in STAGES[STAGES.index(name) + 1:]:
            stages.pop(later, None)
        stages[name] = {"fingerprint": fingerprint, "seconds": round(time.perf_counter() - start, 3),
                        **extra}
        stages.get(PARTIAL, {}).pop(name, None)
        if not stages.get(PARTIAL, True):
            stages.pop(PARTIAL)
        downstream = [s for s in STAGES[STAGES.index(name) + 1:] if s in RESUMABLE]
        if downstream:  # their leftover work was made from what this stage just replaced
            stages[STALE] = sorted(set(stages.get(STALE, [])) | set(downstream), key=STAGES.index)
        self.write_stages(stages)
        log.info("%s: done in %.1f s", name, stages[name]["seconds"])


def holds_run_lock(fn):
    """Decorator: ``fn(cfg, ...)`` runs holding the lock of ``cfg.run_dir`` (``RunDir.locked``)."""
    @functools.wraps(fn)
    def wrapper(cfg: Config, *args, **kwargs):
        with RunDir(cfg.run_dir).locked():
            return fn(cfg, *args, **kwargs)

    return wrapper


def recorded_value(old: dict[str, Any], key: str) -> Any:
    """``key`` in a recorded fingerprint; a run recorded before the setting existed reads as the
    value that reproduces it (``Config.value_before``: its ``before`` value, else its default)."""
    from ghns.config import Config

    if key in old:
        return old[key]
    try:
        return Config.value_before(key)
    except KeyError:
        return None


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Settings that differ between a recorded fingerprint and the current one. A run recorded
    before a setting existed stays valid while that setting is at ``recorded_value``, and a
    setting that no longer feeds the stage (moved to a later one) is ignored."""
    return sorted(k for k in new if recorded_value(old, k) != new[k])


def fingerprint(cfg: Config, stage: str) -> dict[str, Any]:
    """The config values ``stage`` depends on."""
    import dataclasses

    sections = STAGE_SECTIONS[stage]
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.metadata.get("section") in sections}


def stage_runner(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make ``body(cfg, run, fingerprint, force)`` the runner of stage ``name``, called as
    ``runner(cfg, force=False)``: the preamble every stage shares runs first (``RunDir.begin``:
    its inputs exist, its fingerprint, its figures when it is done already, returned without
    calling ``body``); for a resumable stage ``force`` also becomes true when an earlier stage ran
    again since its interrupted work began (``RunDir.starts_over``), and interrupted work begun
    with other settings is refused before ``body`` removes anything (``RunDir.check_partial``)."""
    record = _stages.stage(name)

    def decorate(body: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(body)
        def runner(cfg: Config, force: bool = False) -> Any:
            run = RunDir(cfg.run_dir)
            fp, done = run.begin(cfg, record.name, force)
            if done is not None:
                return done
            if record.resumable:
                force = run.starts_over(record.name, force)
                run.check_partial(record.name, fp, force)
            return body(cfg, run, fp, force)

        return runner

    return decorate
