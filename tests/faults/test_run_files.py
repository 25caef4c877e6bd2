"""Run directories that changed under the user: a checkpoint carrying a pickle payload, an image
that vanished after cataloguing. Each is a real file made or deleted, through the real CLI."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from ghns.data.catalog import Catalog

pytestmark = [pytest.mark.faults, pytest.mark.slow]


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_predict_refuses_a_checkpoint_with_a_pickle_payload(tiny_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("ray"))
    marker = tmp_path / "payload-ran"
    with open(run / "train-final" / "object.pt", "wb") as f:
        pickle.dump({"model": Payload(marker), "settings": {}}, f)
    image = Catalog.read(run / "catalog.parquet").table["path"].iloc[0]
    code, out, err = cli("predict", "--run-dir", run, image)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "object.pt: refused" in lines[0] and "Traceback" not in err
    assert not marker.exists()


def test_evaluate_stops_on_an_image_that_vanished(tiny_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("ray"))
    catalog = Catalog.read(run / "catalog.parquet")
    images = tmp_path / "images"  # the run's own copy of its images, so one can go
    table = catalog.table.copy()
    new_paths = []
    for i, path in enumerate(table["path"]):
        dest = images / f"{i}{Path(path).suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        new_paths.append(str(dest))
    table["path"] = new_paths
    Catalog(catalog.dataset, table, catalog.classes, catalog.info).write(run / "catalog.parquet")
    gone = table[table["split"] == "test"]["path"].iloc[0]
    os.remove(gone)
    code, out, err = cli("evaluate", "--run-dir", run, "--force")
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, err[-3000:]
    assert gone in errors[0] and "missing" in errors[0] and "Traceback" not in err
    # nothing already done is lost: the last report and its stage record stand
    assert (run / "report.json").read_bytes() == (tiny_run / "report.json").read_bytes()
    assert "evaluate" in (run / "stages.json").read_text()


def _copy(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("ray"))
    return run


def _one_line(code: int, err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign"])
def test_a_broken_stages_file_or_catalog_is_one_line_naming_it(tiny_run, tmp_path, cli, damage):
    run = _copy(tiny_run, tmp_path)
    for name in ("stages.json", "catalog.parquet"):
        path = run / name
        good = path.read_bytes()
        path.write_bytes({"truncated": good[: len(good) // 2], "empty": b"",
                          "foreign": b"\x00\x01 not what ghns wrote"}[damage])
        code, _, err = cli("pipeline", "--run-dir", run)
        _one_line(code, err, str(path), "delete it")
        path.write_bytes(good)
    code, _, err = cli("pipeline", "--run-dir", run)  # repaired: nothing else was lost
    assert code == 0, err


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_broken_checkpoint_is_one_line_naming_it(tiny_run, tmp_path, cli, damage):
    run = _copy(tiny_run, tmp_path)
    path = run / "train-final" / "parts.pt"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2] if damage == "truncated" else b"")
    image = Catalog.read(run / "catalog.parquet").split("test")["path"].iloc[0]
    code, _, err = cli("predict", "--run-dir", run, image)
    _one_line(code, err, str(path), "not a readable torch file")


def test_a_catalog_written_by_something_else_is_refused_in_one_line(tiny_run, tmp_path, cli):
    import pandas as pd

    run = _copy(tiny_run, tmp_path)
    path = run / "catalog.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(path)  # a valid parquet file, not a ghns catalog
    code, _, err = cli("pipeline", "--run-dir", run)
    _one_line(code, err, str(path), "not a ghns catalog")


def test_run_files_of_a_newer_ghns_are_refused_in_one_line_and_left_alone(tiny_run, tmp_path, cli):
    """stages.json, the catalog and a checkpoint each carry their format; one from the future is
    refused naming the file, and nothing is rewritten."""
    import json

    import pyarrow.parquet as pq
    import torch

    run = _copy(tiny_run, tmp_path)
    assert json.loads((run / "stages.json").read_text())["_format"] == 1
    stages = run / "stages.json"
    good = stages.read_bytes()
    stages.write_text(json.dumps({**json.loads(good), "_format": 99}))
    future = stages.read_bytes()
    code, _, err = cli("pipeline", "--run-dir", run)
    _one_line(code, err, str(stages), "newer ghns", "run directory format 99")
    assert stages.read_bytes() == future
    stages.write_bytes(good)

    catalog = run / "catalog.parquet"
    table = pq.read_table(catalog)
    meta = json.loads(table.schema.metadata[b"ghns"])
    assert meta["format"] == 1
    pq.write_table(table.replace_schema_metadata({b"ghns": json.dumps({**meta, "format": 2}).encode()}), catalog)
    code, _, err = cli("evaluate", "--run-dir", run)
    _one_line(code, err, str(catalog), "newer ghns", "catalog format 2")
    pq.write_table(table, catalog)

    model = run / "train-final" / "parts.pt"
    state = torch.load(model, weights_only=True)
    state["settings"]["format"] = 7
    torch.save(state, model)
    image = Catalog.read(catalog).split("test")["path"].iloc[0]
    code, _, err = cli("predict", "--run-dir", run, image)
    _one_line(code, err, str(model), "newer ghns", "upgrade ghns")


def test_temporaries_of_an_interrupted_run_are_removed_when_the_lock_is_taken(tiny_run, tmp_path, cli):
    run = _copy(tiny_run, tmp_path)
    left = [run / "report.json.4242-0badcafe.tmp", run / "rejection" / "inputs.npz.4242-0badcafe.npz",
            run / "negatives" / "store.4242-deadbeef.tmp" / "data.bin"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    kept = run / "notes.4242.tmp"  # a user's file that only looks like one: kept
    kept.write_text("mine")
    code, _, err = cli("evaluate", "--run-dir", run)
    assert code == 0, err
    assert not any(p.exists() for p in left) and not (run / "negatives" / "store.4242-deadbeef.tmp").exists()
    assert kept.read_text() == "mine" and "removed 3 temporary file(s)" in err


def test_a_full_disk_while_saving_a_model_is_one_line_and_keeps_the_last_report(tiny_run, tmp_path):
    """RLIMIT_FSIZE makes every write past 200 kB fail as a full disk would (models are ~1 MB)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    run = _copy(tiny_run, tmp_path)
    report = (run / "report.json").read_bytes()
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
              "from ghns.cli import main\n"
              f"main(['train-final', '--run-dir', {str(run)!r}, '--force', '--trainer', 'local'])\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)
    _one_line(done.returncode, done.stderr, "could not be written", "free some space")
    assert (run / "report.json").read_bytes() == report and json.loads(report)["accuracy"]
    assert not [p for p in run.rglob("*") if ".tmp" in p.name or p.name.endswith("-x.npz")]
