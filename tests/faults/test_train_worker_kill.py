"""A Ray Train worker killed with SIGKILL in the middle of stage 3: Ray Train starts a new worker
group, which resumes from the last checkpoint (not from scratch), and the stage finishes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.faults.test_actor_kill import _actor_pids

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_a_killed_stage3_worker_resumes_from_its_checkpoint(tiny_run, tmp_path, monkeypatch):
    from ghns.config import Config
    from ghns.pipeline import run_until
    from ghns.train import runner

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("ray"))
    cfg = Config.from_yaml(run / "config.yaml", saved_run=True).replace(
        run_dir=str(run), stage3_epochs=8, seed_ensemble=1, max_failures=1, trainer="ray",
        patience=0)  # all 8 epochs run: the kill strikes after the third, resumption goes on
    original = runner.fit_all

    def fit_every_epoch(jobs, cfg, name, **worker):  # a checkpoint at every epoch
        return original(jobs, cfg, name, **worker, report_seconds=0)

    monkeypatch.setattr(runner, "fit_all", fit_every_epoch)
    history = run / "train-final" / "original.history.json"
    killed: list[int] = []
    stop = threading.Event()

    def strike() -> None:
        while not stop.is_set() and not killed:
            try:
                epochs = len(json.loads(history.read_text())) if history.is_file() else 0
            except ValueError:
                epochs = 0
            if epochs >= 3:
                for pid in _actor_pids("RayTrainWorker"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    striker = threading.Thread(target=strike, daemon=True)
    striker.start()
    try:
        run_until(cfg, "train-final", force=True)
    finally:
        stop.set()
        striker.join()
    assert killed, "no training worker was killed"
    starts = [json.loads(line)["start_epoch"] for line in
              Path(str(history) + ".starts").read_text().splitlines()]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 1, starts  # resumed, not restarted
    epochs = [h["epoch"] for h in json.loads(history.read_text())]
    assert epochs == list(range(8))
    assert (run / "train-final" / "original.pt").is_file() and json.loads((run / "stages.json").read_text())["train-final"]
    # one Ray Train run trained every stage-3 model (one worker group, restarted once), and the
    # models after the killed one started once, from scratch
    assert sorted(p.name for p in (run / "ray").iterdir() if p.name.startswith("train-final")) == ["train-final"]
    for name in ("object", "parts"):
        later = Path(run / "train-final" / f"{name}.history.json.starts").read_text().splitlines()
        assert [json.loads(line)["start_epoch"] for line in later] == [0], name
