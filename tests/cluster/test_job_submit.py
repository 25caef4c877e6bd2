"""``ray job submit -- python jobs/full_pipeline.py`` against a local head started with
``ray start --head --num-cpus 2``: the job runs the tiny pipeline, succeeds, leaves a report, and
mirrors its run directory to a ``--sync-to`` URI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def head():
    """A head node in its own process group (``ray start --block``), so that stopping it never
    touches another Ray on this machine (``ray stop`` would stop them all)."""
    temp = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: Ray's socket paths are limited
    gcs, agent, agent_grpc, env_agent, metrics, nm, om, client, w0 = free_ports(9)
    dashboard = 8265 if 8265 not in (gcs, agent) and _free(8265) else free_ports(1)[0]
    # the job's "python" is the one running these tests (the job inherits the head's PATH)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = RAY + ["start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0",
                 "--port", str(gcs), "--dashboard-port", str(dashboard),
                 "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
                 "--dashboard-agent-listen-port", str(agent),
                 "--dashboard-agent-grpc-port", str(agent_grpc),
                 "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
                 "--node-manager-port", str(nm), "--object-manager-port", str(om),
                 "--ray-client-server-port", str(client),
                 "--min-worker-port", str(20000 + w0 % 20000), "--max-worker-port", str(20100 + w0 % 20000),
                 "--object-store-memory", str(400 * 2**20), "--temp-dir", temp, "--disable-usage-stats"]
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_dashboard(address, proc, Path(temp) / "head.log")
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:  # a graceful stop takes ~30 s here; the whole group is killed after 10
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _auth() -> dict[str, str]:
    """Ray's token (auth is on: ghns leaves Ray's default, and a token in ~/.ray makes ``ray
    start`` use it too), as the dashboard's HTTP API wants it; none where there is no token."""
    token = os.environ.get("RAY_AUTH_TOKEN") or ""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _wait_for_dashboard(address: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{address}/api/version", headers=_auth()),
                                        timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the dashboard at {address} did not come up: {log.read_text()[-2000:]}")


def test_ray_job_submit_runs_the_pipeline(head, tmp_path):
    run_dir, mirror = tmp_path / "run", tmp_path / "mirror"
    submission = f"ghns-test-{int(time.time())}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **({"RAY_AUTH_MODE": "token"} if _auth() else {})}
    env.pop("RAY_ADDRESS", None)  # the client sends the token where auth is on (docs/running.md)
    for attempt in range(6):  # the head's job agent can come up after its dashboard answers
        submit = subprocess.run(
            RAY + ["job", "submit", "--address", head, "--working-dir", ".", "--no-wait",
                   "--submission-id", submission, "--",
                   "python", "jobs/full_pipeline.py", "--config", "configs/tiny.yaml",
                   "--run-dir", str(run_dir), "--root", str(tmp_path / "synthetic"),
                   "--sync-to", f"file://{mirror}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        if submit.returncode == 0 or "No available agent to submit job" not in submit.stderr:
            break
        time.sleep(5)
    assert submit.returncode == 0, submit.stderr[-2000:]

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head, headers=_auth())
    deadline = time.time() + 900
    status = client.get_job_status(submission)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.time() < deadline:
        time.sleep(3)
        status = client.get_job_status(submission)
    logs = client.get_job_logs(submission)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]

    report = json.loads((run_dir / "report.json").read_text())
    assert report["dataset"] == "synthetic"
    assert set(report["accuracy"]) >= {"original", "object", "parts", "fused", "fused_without_negatives"}
    assert "# GHNS report: synthetic" in logs  # the job log ends with the table
    assert "job finished after" in logs
    # the mirror holds the finished run: same report, every stage recorded
    assert json.loads((mirror / "report.json").read_text()) == report
    assert set(json.loads((mirror / "stages.json").read_text())) == set(json.loads(
        (run_dir / "stages.json").read_text()))
