"""``ghns pipeline`` killed with SIGKILL during each of localize, train-parts, generate and
train-final (at a point the test waits for), then run again: it finishes, no table holds a
duplicate row, no history repeats an epoch, and the report equals an uninterrupted run's.

What the code promises after a kill (and what is checked): the stages finished before the kill
are kept as they were (byte-identical files); the interrupted stage resumes from its last
checkpoint (localize, train-parts, train-final: weights, optimiser, scheduler, best epoch and
random streams, ``ghns.train.streams``) or its last finished class shard (generate), so the
finished run is bitwise the uninterrupted one on the same machine (same device, threads and
workers): ``report.json`` is equal but for the seconds each stage took.

That the rerun *resumed* rather than started over is checked directly, not only through equal
reports (a deterministic restart would give them too): each training stage is killed only once a
checkpoint of it exists (``GHNS_REPORT_SECONDS=0``: one per epoch), and the process that runs it
next must print its first epoch after the checkpointed one; the generator is killed once a class
shard exists, and the shards written before the kill must not be written again.
``test_the_resume_check_fails_on_a_build_that_does_not_resume`` runs the same check against the
package with ``resume`` switched off and requires it to fail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, TINY_SYNTHETIC

pytestmark = [pytest.mark.faults, pytest.mark.slow]

# More epochs than the tiny default, so that each stage is still running when the test strikes.
# The pipeline joins the test session's Ray (RAY_ADDRESS), where 'auto' would pick Ray Train: the
# training runs here are local, as a laptop's are (Ray Train's resumption after a kill:
# tests/faults/test_train_worker_kill.py).
LONGER = ["--localize-epochs", "6", "--stage1-epochs", "6", "--stage3-epochs", "4", "--trainer", "local"]

# stage -> files (globs) that exist only once the stage has something to resume from
KILL_POINTS = [
    ("localize", "ray/localize/**/state.pt"),
    ("train-parts", "ray/train-parts/**/state.pt"),
    ("generate", "negatives/class_*.parquet"),
    ("train-final", "ray/train-final*/**/state.pt"),
]
EVERY_EPOCH = {"GHNS_REPORT_SECONDS": "0"}  # a checkpoint each epoch: a kill lands after one


def _checkpointed_epoch(run: Path, pattern: str) -> int:
    """The epoch of the newest checkpoint matching ``pattern`` (the one a rerun resumes from)."""
    import torch

    newest = max(run.glob(pattern), key=lambda p: p.stat().st_mtime_ns)
    return int(torch.load(newest, map_location="cpu", weights_only=True)["epoch"])


def resumed_after(log: str, stage: str, epoch: int) -> bool:
    """Whether a process's console ``log`` shows ``stage`` going on after ``epoch`` (0-based)
    rather than from its first epoch again: its first epoch line is ``epoch + 2`` (1-based)."""
    firsts = [int(line.split(f"{stage}: epoch ", 1)[1].split("/")[0]) for line in log.splitlines()
              if f"{stage}: epoch " in line]
    return bool(firsts) and firsts[0] == epoch + 2


def _stages(run: Path) -> dict:
    path = run / "stages.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _kill_during(run: Path, stage: str, marker: str, env: dict) -> dict:
    """Start the pipeline, SIGKILL it once ``stage`` is under way (recorded as partial work, and
    ``marker`` written)."""
    log = run.parent / f"killed-in-{stage}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ghns", "pipeline", "--run-dir", str(run),
                                 *TINY_SYNTHETIC, *LONGER], env=env, stdout=err, stderr=err,
                                start_new_session=True)
    try:
        end = time.monotonic() + 600
        while not (any(run.glob(marker)) and _stages(run).get("_partial", {}).get(stage)):
            assert proc.poll() is None, (f"the pipeline ended before {stage} began:\n"
                                         + log.read_text()[-3000:])
            assert time.monotonic() < end, f"timed out waiting for {marker}"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(3)  # Ray notices the dead driver and releases its job's actors, as for a user
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return _stages(run)


def _snapshot(run: Path, names: list[str]) -> dict[str, bytes]:
    return {n: (run / n).read_bytes() for n in names if (run / n).is_file()}


def test_killed_in_each_stage_the_rerun_finishes_clean(tmp_path, ray_session):
    import ray

    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           **EVERY_EPOCH}
    run = tmp_path / "run"
    resumes: dict[str, int] = {}  # training stage -> the epoch it was killed after
    shards: dict[Path, int] = {}  # the generator's shards written before its kill -> mtime
    done_files = {"localize": ["localization.parquet", "localization.json"],
                  "train-parts": ["train-parts/parts.pt", "embeddings.parquet", "train-parts/filternet.pt"],
                  "generate": ["generate.json"]}
    kept: dict[str, bytes] = {"catalog.parquet": b""}
    previous = None
    for stage, marker in KILL_POINTS:
        stages = _kill_during(run, stage, marker, env)
        if previous in resumes:  # this process ran the stage killed before: resumed, not restarted
            log = (run.parent / f"killed-in-{stage}.log").read_text()
            assert resumed_after(log, previous, resumes[previous]), f"{previous} did not resume"
        if stage == "generate":
            shards = {p: p.stat().st_mtime_ns for p in (run / "negatives").glob("class_*.parquet")}
        elif stage != "train-final":
            resumes[stage] = _checkpointed_epoch(run, marker)
        previous = stage
        assert stage not in stages, f"{stage} finished before the kill: nothing was interrupted"
        assert stages.get("_partial", {}).get(stage), f"{stage} did not record its partial work"
        for name, data in _snapshot(run, list(kept)).items():  # finished stages stay as they were
            if kept[name]:
                assert data == kept[name], f"{name} changed after a kill in {stage}"
            kept[name] = data
        for name in done_files.get(stage, []):
            kept.setdefault(name, b"")
    _pipeline(run, env)  # a process like the killed ones (threads, environment): only the kills differ
    assert shards and all(p.stat().st_mtime_ns == t for p, t in shards.items()), "finished shards were rewritten"
    for name, data in _snapshot(run, [n for n in kept if kept[n]]).items():
        assert data == kept[name], f"{name} changed in the final rerun"

    stages = _stages(run)
    assert "_partial" not in stages and set(stages) >= {"catalog", "localize", "train-parts", "generate",
                                                        "train-final", "evaluate"}
    for table, key in (("catalog.parquet", "image_id"), ("localization.parquet", "image_id"),
                       ("embeddings.parquet", "image_id")):
        ids = pd.read_parquet(run / table)[key]
        assert not ids.duplicated().any(), f"duplicate rows in {table}"
    shards = sorted((run / "negatives").glob("class_*.parquet"))
    assert len(shards) == 4  # one per class, each written once (atomically): no appended rows
    for shard in shards:
        assert set(pd.read_parquet(shard, columns=["class"])["class"]) == {int(shard.stem.split("_")[1])}
    for history in [run / "localize" / "history.json", run / "train-parts" / "history.json",
                    *sorted((run / "train-final").glob("*.history.json"))]:
        epochs = [h["epoch"] for h in json.loads(history.read_text())]
        assert epochs == sorted(set(epochs)) and epochs == list(range(len(epochs))), history
    report = json.loads((run / "report.json").read_text())
    for name in ("original", "object", "parts", "fused", "fused_without_negatives", "seed_ensemble"):
        assert 0.0 <= report["accuracy"][name] <= 100.0

    never_killed = tmp_path / "never-killed"
    _pipeline(never_killed, env)
    want = json.loads((never_killed / "report.json").read_text())
    for key in ("seconds",):  # wall time: the only figure a kill may change
        report.pop(key), want.pop(key)
    assert report == want, _differences(report, want)


def _pipeline(run: Path, env: dict) -> None:
    done = subprocess.run([sys.executable, "-m", "ghns", "pipeline", "--run-dir", str(run), *TINY_SYNTHETIC,
                           *LONGER], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]


def _differences(a, b, path="report") -> str:
    """Where two JSON values differ (for the assertion message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return "; ".join(_differences(a.get(k), b.get(k), f"{path}.{k}") for k in sorted(set(a) | set(b))
                         if a.get(k) != b.get(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return "; ".join(_differences(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"{path}: {a!r} after the kills, {b!r} never killed"


def test_the_resume_check_fails_on_a_build_that_does_not_resume(tmp_path, ray_session):
    """The same kill and check, with the package's ``resume`` replaced (in the child processes
    only, by a ``sitecustomize``) by one that ignores the checkpoint: the check must fail."""
    import ray

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import ghns.train.epochs as e\n"
        "e.resume = lambda state, *args, **kwargs: 0  # start over, whatever was saved\n")
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{REPO}",
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address, **EVERY_EPOCH}
    run = tmp_path / "run"
    _kill_during(run, "localize", KILL_POINTS[0][1], env)
    epoch = _checkpointed_epoch(run, KILL_POINTS[0][1])
    done = subprocess.run([sys.executable, "-m", "ghns", "localize", "--run-dir", str(run), *TINY_SYNTHETIC,
                           *LONGER], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not resumed_after(done.stdout + done.stderr, "localize", epoch)
