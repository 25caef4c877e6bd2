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


def test_push_deletes_what_the_run_no_longer_holds_and_skips_temporaries(tmp_path):
    from ghns.storage import Mirror, pull

    run, remote = tmp_path / "run", tmp_path / "remote"
    (run / "negatives").mkdir(parents=True)
    for c in range(3):
        (run / "negatives" / f"class_{c:05d}.parquet").write_bytes(b"shard %d" % c)
    (run / "report.json.4242-0badcafe.tmp").write_text("half")  # an interrupted writer's
    mirror = Mirror(run, f"file://{remote}")
    assert mirror.push() == 3 and not (remote / "report.json.4242-0badcafe.tmp").exists()
    (run / "negatives" / "class_00002.parquet").unlink()  # a rerun with fewer classes
    mirror.push()
    assert sorted(p.name for p in (remote / "negatives").iterdir()) == ["class_00000.parquet", "class_00001.parquet"]
    fresh = tmp_path / "fresh"
    assert pull(f"file://{remote}", fresh) == 2  # the stale shard does not come back
    assert not list(fresh.rglob("*.tmp"))


@pytest.mark.parametrize("key", ["../outside.txt", "a/../../outside.txt", "/"])
def test_a_mirror_key_outside_the_run_directory_is_refused(tmp_path, key):
    from ghns.errors import GHNSError
    from ghns.storage import local_target

    with pytest.raises(GHNSError, match="outside the run directory"):
        local_target(tmp_path / "run", key, "s3://bucket/run")
    assert local_target(tmp_path / "run", "/negatives/class_00000.parquet", "s3://b/r") == \
        tmp_path / "run" / "negatives" / "class_00000.parquet"
