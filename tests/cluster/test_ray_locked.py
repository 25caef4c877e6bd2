"""A Ray that ghns starts is locked: Ray's token authentication stays on (ghns never sets
RAY_AUTH_MODE=disabled) and no dashboard (whose job API runs submitted code) unless asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = """
import ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
import ghns.raykit as raykit
from ghns.config import Config
raykit.ensure_ray(Config(object_store_mb=128, dashboard={dashboard}))
print("auth", is_token_auth_enabled())
print("dashboard", bool(ray._private.worker.global_worker.node.address_info.get("webui_url")))
"""


def _started(dashboard: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(dashboard=dashboard)], cwd=REPO,
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("auth", "dashboard")))


def test_a_ray_that_ghns_starts_keeps_token_auth_and_has_no_dashboard_unless_asked():
    assert _started(False) == {"auth": "True", "dashboard": "False"}
    assert _started(True)["auth"] == "True"


def test_no_code_or_cluster_file_disables_auth_or_opens_the_dashboard():
    for path in (REPO / "ghns").rglob("*.py"):
        assert "RAY_AUTH_MODE" not in path.read_text() or "disabled" not in path.read_text(), path
    cluster = Path(REPO / "cluster.yaml").read_text()
    assert "0.0.0.0" not in cluster and "chmod 777" not in cluster
