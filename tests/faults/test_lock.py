"""One process per run directory, and a run directory the user cannot write: real processes,
real locks, a real permission error (no mocks)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ghns.rundir import RunDir, RunLocked
from tests.conftest import REPO, TINY_SYNTHETIC

pytestmark = pytest.mark.faults

_HOLD = """
import sys, time
from ghns.rundir import RunDir
with RunDir(sys.argv[1]).locked():
    print("held", flush=True)
    time.sleep(600)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_the_second_process_stops_with_one_line_and_a_killed_holder_frees_it(tmp_path, cli):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out, err = cli("evaluate", "--run-dir", run)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith("error: ") and f"in use by pid {holder.pid} " in lines[0]
        assert "use another --run-dir" in lines[0] and "Traceback" not in err
        with pytest.raises(RunLocked):
            with RunDir(run).locked():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunDir(run).locked():  # the kernel dropped the dead holder's lock: no stale lock file
        with RunDir(run).locked():  # re-entrant in one process
            pass


@pytest.mark.slow
def test_two_concurrent_pipelines_on_one_run_directory(tmp_path, cli, ray_session):
    import ray

    run = tmp_path / "run"
    env = {**_env(), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # the session's Ray
    # trained in the pipeline's process (on a Ray address 'auto' picks Ray Train, whose start-ups
    # this test does not need: it is about the lock)
    first = subprocess.Popen([sys.executable, "-m", "ghns", "pipeline", "--run-dir", str(run),
                              *TINY_SYNTHETIC, "--trainer", "local"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        lock = run / ".lock"
        _wait_for(lambda: lock.is_file() and f"pid {first.pid} " in lock.read_text(), 120,
                  "the first pipeline to take the lock")
        code, out, err = cli("pipeline", "--run-dir", run, *TINY_SYNTHETIC, "--trainer", "local")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and f"in use by pid {first.pid} " in lines[0], err
        _, first_err = first.communicate(timeout=900)
        assert first.returncode == 0, first_err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    code, out, err = cli("evaluate", "--run-dir", run)  # the lock went with the first process
    assert code == 0, err
    assert "GHNS report" in out


def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path):
    """A real permission error: the command runs as an unprivileged user (root ignores modes)."""
    base = Path(tempfile.mkdtemp(prefix="ghns-ro-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        run = base / "run"
        run.mkdir()
        os.chmod(run, 0o555)
        cmd = [sys.executable, "-m", "ghns", "evaluate", "--run-dir", str(run)]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: cannot drop privileges")
            cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *cmd]
        env = {**_env(), "HOME": str(base), "GHNS_CACHE": str(base / "cache")}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=base)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Permission denied" in lines[0]
        assert str(run) in lines[0]
    finally:
        os.chmod(base / "run", 0o755)
        shutil.rmtree(base, ignore_errors=True)
