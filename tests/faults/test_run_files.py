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
