"""``ghns sweep`` with Ray Tune on the tiny run: a two-trial stage-1 sweep (Ray Train inside Tune
trials, ASHA) and a two-trial fusion sweep whose best config round-trips into ``ghns pipeline
--config``."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml

pytestmark = pytest.mark.slow


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    return run


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_train_parts_sweep_trains_each_trial_and_writes_the_best_config(cli, run_copy):
    code, out, err = cli("sweep", "--run-dir", run_copy, "--space", "train-parts", "--trials", "2")
    assert code == 0, err
    sweep = run_copy / "sweeps" / "train-parts"
    rows = read_rows(sweep / "results.csv")
    # ASHA may stop the weaker trial at its rung (epoch 1 of 2): that is a result, not an error
    assert len(rows) == 2 and all(r["status"] in ("done", "stopped early (ASHA)") for r in rows)
    assert len({(r["alpha"], r["beta"], r["gamma"]) for r in rows}) == 2  # two different trials
    for r in rows:  # each trial trained stage 1 in its own directory and Tune saw every epoch
        assert 0 <= float(r["val_acc_parts_vote"]) <= 100
        assert (sweep / "trials" / r["trial"] / "train-parts" / "parts.pt").is_file()
        assert int(r["iterations"]) >= 1
    best = max(rows, key=lambda r: float(r["val_acc_parts_vote"]))
    values = yaml.safe_load((sweep / "best.yaml").read_text())
    assert (values["alpha"], values["beta"], values["gamma"]) == pytest.approx(
        (float(best["alpha"]), float(best["beta"]), float(best["gamma"])))
    assert "run_dir" not in values and values["stage1_epochs"] == 2  # the base run's settings
    assert "best:" in out
    # the base run's stage 1 ran with other loss weights: the config is read and refused clearly
    code, out, err = cli("pipeline", "--config", sweep / "best.yaml", "--run-dir", run_copy)
    assert code == 2 and "already holds stage 'train-parts' run with other settings" in err


def test_fusion_sweep_best_config_round_trips_into_pipeline(cli, run_copy):
    code, out, err = cli("sweep", "--run-dir", run_copy, "--space", "fusion", "--trials", "2")
    assert code == 0, err
    sweep = run_copy / "sweeps" / "fusion"
    rows = read_rows(sweep / "results.csv")
    assert len(rows) == 2
    best = max(rows, key=lambda r: float(r["val_fused"]))
    code, out, err = cli("pipeline", "--config", sweep / "best.yaml", "--run-dir", run_copy)
    assert code == 0, err
    assert "train-final: done already" in err  # nothing retrained
    report = json.loads((run_copy / "report.json").read_text())
    assert report["fusion"]["rule"] == "grid"  # fixed weights fuse by Eq. 11
    assert ",".join(f"{w:g}" for w in report["fusion"]["weights"]) == best["fusion_weights"]
    assert report["fusion_from"] == "config"
    assert report["table6"]["original + object + parts"]["val_top1"] == pytest.approx(float(best["val_fused"]))


def test_sweep_refuses_a_run_without_what_it_needs(cli, tmp_path):
    code, out, err = cli("sweep", "--run-dir", tmp_path / "empty", "--space", "fusion")
    assert code == 2 and err.startswith("error: sweep --space fusion needs scores")
    code, out, err = cli("sweep", "--run-dir", tmp_path, "--space", "nope")
    assert code == 2 and "--space" in err
