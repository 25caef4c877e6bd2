"""``ghns pipeline`` killed with SIGKILL during each of localize, train-parts, generate and
train-final (at a point the test waits for), then run again: it finishes, no table holds a
duplicate row, no history repeats an epoch, and the report equals an uninterrupted run's.

What the code promises after a kill (and what is checked): the stages finished before the kill
are kept as they were (byte-identical files); the interrupted stage resumes from its last
checkpoint (localize, train-parts, train-final: weights, optimiser, scheduler, best epoch and
random streams, ``ghns.train.streams``) or its last finished class shard (generate), so the
finished run is bitwise the uninterrupted one on the same machine (same device, threads and
workers): ``report.json`` is equal but for the seconds each stage took."""

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

# stage -> (its record in stages.json, a file that exists only once the stage is under way)
KILL_POINTS = [
    ("localize", "localize/history.json"),
    ("train-parts", "train-parts/history.json"),
    ("generate", "negatives/settings.json"),
    ("train-final", "train-final/original.history.json"),
]


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
        while not ((run / marker).is_file() and _stages(run).get("_partial", {}).get(stage)):
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

    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    run = tmp_path / "run"
    done_files = {"localize": ["localization.parquet", "localization.json"],
                  "train-parts": ["train-parts/parts.pt", "embeddings.parquet", "train-parts/filternet.pt"],
                  "generate": ["generate.json"]}
    kept: dict[str, bytes] = {"catalog.parquet": b""}
    for stage, marker in KILL_POINTS:
        stages = _kill_during(run, stage, marker, env)
        assert stage not in stages, f"{stage} finished before the kill: nothing was interrupted"
        assert stages.get("_partial", {}).get(stage), f"{stage} did not record its partial work"
        for name, data in _snapshot(run, list(kept)).items():  # finished stages stay as they were
            if kept[name]:
                assert data == kept[name], f"{name} changed after a kill in {stage}"
            kept[name] = data
        for name in done_files.get(stage, []):
            kept.setdefault(name, b"")
    _pipeline(run, env)  # a process like the killed ones (threads, environment): only the kills differ
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
