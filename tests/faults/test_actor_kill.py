"""A generator actor killed (SIGKILL of its worker process) while the generate stage runs: Ray
Data restarts it and retries its batch, and the bank is the uninterrupted run's, row for row."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _actor_pids(name: str) -> list[int]:
    """Worker processes whose title names ``name`` (Ray sets ``ray::<actor class>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if name.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_killed_generator_actor_leaves_the_bank_unchanged(tiny_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("ray"))
    killed: list[int] = []
    stop = threading.Event()

    def strike() -> None:
        while not stop.is_set() and not killed:
            for pid in _actor_pids("GenerateActor"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.02)

    striker = threading.Thread(target=strike, daemon=True)
    striker.start()
    try:
        code, out, err = cli("generate", "--run-dir", run, "--force")
    finally:
        stop.set()
        striker.join()
    assert killed, "no generator actor was seen alive: nothing was killed"
    assert code == 0, err[-3000:]
    shards = sorted(p.name for p in (tiny_run / "negatives").glob("class_*.parquet"))
    assert shards and sorted(p.name for p in (run / "negatives").glob("class_*.parquet")) == shards
    for name in shards:
        pd.testing.assert_frame_equal(pd.read_parquet(run / "negatives" / name),
                                      pd.read_parquet(tiny_run / "negatives" / name))
