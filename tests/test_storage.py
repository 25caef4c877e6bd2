"""Run-directory mirroring to a pyarrow filesystem URI, and the Ray job's argument handling."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest

from tests.conftest import REPO


def load_job():
    spec = importlib.util.spec_from_file_location("full_pipeline", REPO / "jobs" / "full_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mirror_pushes_only_changed_files_and_pull_restores_them(tmp_path):
    from ghns.storage import Mirror, pull

    run, remote = tmp_path / "run", tmp_path / "remote"
    (run / "train-parts").mkdir(parents=True)
    (run / "config.yaml").write_text("a: 1\n")
    (run / "train-parts" / "parts.pt").write_bytes(os.urandom(3 << 20))
    mirror = Mirror(run, f"file://{remote}")
    assert mirror.push() == 2
    assert mirror.push() == 0  # nothing changed
    time.sleep(0.01)
    (run / "config.yaml").write_text("a: 2\n")
    (run / "report.json").write_text("{}")
    assert mirror.push() == 2
    assert (remote / "train-parts" / "parts.pt").read_bytes() == (run / "train-parts" / "parts.pt").read_bytes()

    fresh = tmp_path / "fresh"
    assert pull(f"file://{remote}", fresh) == 3
    assert (fresh / "config.yaml").read_text() == "a: 2\n"
    assert (fresh / "train-parts" / "parts.pt").read_bytes() == (run / "train-parts" / "parts.pt").read_bytes()
    assert pull(f"file://{tmp_path / 'nothing-here'}", tmp_path / "x") == 0


def test_job_takes_sync_to_out_and_passes_the_rest_to_the_pipeline():
    job = load_job()
    assert job.split_sync_to(["--config", "c.yaml", "--sync-to", "s3://b/r", "--tau", "0.5"]) == (
        "s3://b/r", ["--config", "c.yaml", "--tau", "0.5"])
    assert job.split_sync_to(["--sync-to=file:///x"]) == ("file:///x", [])
    assert job.split_sync_to(["--run-dir", "r"]) == (None, ["--run-dir", "r"])
    with pytest.raises(SystemExit):
        job.split_sync_to(["--sync-to"])


def test_job_finds_the_run_dir_from_flag_or_config(tmp_path):
    job = load_job()
    config = tmp_path / "c.yaml"
    config.write_text(f"run_dir: {tmp_path / 'from-config'}\n")
    assert job.run_dir_of(["--config", str(config)]) == str(tmp_path / "from-config")
    assert job.run_dir_of(["--config", str(config), "--run-dir", "flag"]) == "flag"
