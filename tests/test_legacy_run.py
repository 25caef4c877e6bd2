"""A run directory written by an earlier ghns (commit 47bfc1d, before the packages were renamed
after their stages, the models registered themselves and rejection scoring existed) still reads
as done, evaluates to the same accuracies, resumes an interrupted stage and predicts.

The earlier run is made here, by that commit's own code taken from the repository's history
(``git archive``), in a process of its own with its own Ray; the test skips where the history is
not there (a shallow clone)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_SYNTHETIC, stop_train_final_after_original

LEGACY = "47bfc1d"
# the tiny run's flags that version knew (near misses came later), trained in its process
FLAGS = [f for i, f in enumerate(TINY_SYNTHETIC)
         if f != "--synthetic-near-misses" and TINY_SYNTHETIC[i - 1] != "--synthetic-near-misses"]


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory) -> Path:
    have = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{LEGACY}^{{commit}}"],
                          capture_output=True)
    if have.returncode:
        pytest.skip(f"commit {LEGACY} is not in this clone's history")
    tmp = tmp_path_factory.mktemp("legacy")
    archive = tmp / "src.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), LEGACY, "ghns"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp / "src", filter="data")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, its own code
    env.update(PYTHONPATH=str(tmp / "src"), GHNS_CACHE=str(tmp / "cache"), RAY_USAGE_STATS_ENABLED="0")
    run = tmp / "run"
    done = subprocess.run([sys.executable, "-m", "ghns", "pipeline", "--run-dir", str(run), *FLAGS,
                           "--trainer", "local", "--object-store-mb", "256"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp / "src" / "ghns" / "stage3").is_dir()  # the layout of that version, indeed
    return run


def test_an_earlier_run_reads_as_done_and_evaluates_to_the_same_accuracies(legacy_run, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(legacy_run, run, ignore=shutil.ignore_patterns("ray"))
    before = json.loads((run / "report.json").read_text())
    models = {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")}
    code, _, err = cli("pipeline", "--run-dir", run)
    assert code == 0, err
    for stage in ("localize", "train-parts", "generate", "train-final", "evaluate"):
        assert f"{stage}: done already" in err
    code, _, err = cli("evaluate", "--run-dir", run, "--force")
    assert code == 0, err
    after = json.loads((run / "report.json").read_text())
    assert after["accuracy"] == before["accuracy"] and after["table6"] == before["table6"]
    assert {"fused", "combined", "calibration"} <= set(after["reject_threshold"])
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")} == models  # nothing trained again


def test_an_earlier_run_resumes_an_interrupted_stage_and_predicts(legacy_run, cli, tmp_path):
    from ghns.data.catalog import Catalog

    run = tmp_path / "run"
    shutil.copytree(legacy_run, run, ignore=shutil.ignore_patterns("ray"))
    kept, kept_mtime = stop_train_final_after_original(run)
    code, out, err = cli("pipeline", "--run-dir", run)
    assert code == 0, err
    assert "train-parts: done already" in err and "train-final: original done already" in err
    assert kept.stat().st_mtime_ns == kept_mtime and (run / "train-final" / "object.pt").is_file()
    image = Catalog.read(run / "catalog.parquet").split("test")["path"].iloc[0]
    code, out, err = cli("predict", "--run-dir", run, "--reject", image)
    assert code == 0, err
    assert out.splitlines()[0] == image and len([ln for ln in out.splitlines() if ln.startswith("  0.")]) >= 4
