"""A generator actor killed (SIGKILL of its worker process) while the generate stage runs: Ray
Data restarts it and retries its batch, and the bank is the uninterrupted run's, row for row."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pandas as pd
import pytest

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _actor_pids(name: str) -> list[int]:
    """Processes of the live actors of class ``name`` in the Ray this test is connected to (its
    session's), from Ray's own actor table: never another process of the machine, however it
    is named."""
    import ray._private.state as state

    def named(info: dict) -> bool:  # Ray Data's actors are its map workers: their title names the class
        if name in str(info.get("ActorClassName", "")):
            return True
        try:
            return name.encode() in open(f"/proc/{int(info['Pid'])}/cmdline", "rb").read()
        except OSError:
            return False
    return [int(info["Pid"]) for info in state.actors().values()
            if info.get("State") == "ALIVE" and info.get("Pid") and named(info)]


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
