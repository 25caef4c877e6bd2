"""Stage records: partial work remembers the settings it began with."""

from __future__ import annotations

import json

import pytest

from ghns.errors import StageError
from ghns.rundir import PARTIAL, RunDir


class Interrupted(Exception):
    pass


def begin_and_stop(run: RunDir, stage: str, fp: dict) -> None:
    with pytest.raises(Interrupted):
        with run.stage(stage, fp):
            raise Interrupted


def test_interrupted_work_is_refused_under_other_settings(tmp_path):
    run = RunDir(tmp_path / "run")
    begin_and_stop(run, "train-final", {"stage3_lr": 0.01, "seed": 0})
    assert run.stages()[PARTIAL]["train-final"] == {"stage3_lr": 0.01, "seed": 0}
    assert "train-final" not in run.stages()
    with pytest.raises(StageError, match=r"interrupted work of stage 'train-final' .*stage3_lr: 0.01 -> 0.05"):
        with run.stage("train-final", {"stage3_lr": 0.05, "seed": 0}):
            pass
    with run.stage("train-final", {"stage3_lr": 0.01, "seed": 0}):  # the same settings resume it
        pass
    stages = json.loads(run.stages_file.read_text())
    assert PARTIAL not in stages and stages["train-final"]["fingerprint"]["stage3_lr"] == 0.01


def test_force_starts_interrupted_work_over(tmp_path):
    run = RunDir(tmp_path / "run")
    begin_and_stop(run, "localize", {"localize_epochs": 40})
    run.check_partial("localize", {"localize_epochs": 5}, force=True)
    with run.stage("localize", {"localize_epochs": 5}, force=True):
        pass
    assert run.stages()["localize"]["fingerprint"] == {"localize_epochs": 5}


def test_stages_that_redo_everything_record_no_partial_work(tmp_path):
    run = RunDir(tmp_path / "run")
    begin_and_stop(run, "evaluate", {"fusion_rule": "grid"})
    assert PARTIAL not in run.stages()
    with run.stage("evaluate", {"fusion_rule": "loglinear"}):
        pass


def test_a_rerun_stage_makes_the_leftover_work_of_later_stages_start_over(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.stage("localize", {"a": 1}):
        pass
    assert run.starts_over("train-parts") and run.starts_over("train-final")  # nothing of theirs is valid
    begin_and_stop(run, "train-parts", {"b": 1})  # stage 1 began (on these boxes), then died
    assert not run.starts_over("train-parts")  # its checkpoints are of the current boxes: resume them
    with run.stage("localize", {"a": 1}, force=True):  # the boxes are made again
        pass
    assert run.starts_over("train-parts")  # stage 1's checkpoints are of the old boxes now
    run.check_partial("train-parts", {"b": 2})  # and its old settings bind nothing
    with run.stage("train-parts", {"b": 2}):
        pass
    assert not run.starts_over("train-parts") and run.starts_over("train-final")
    assert run.starts_over("train-parts", force=True)


def test_atomic_path_replaces_on_success_and_leaves_the_old_file_on_error(tmp_path):
    from ghns.rundir import atomic_path

    target = tmp_path / "sub" / "scores.npz"
    with atomic_path(target, suffix=".npz") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".npz") and tmp != target
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"torn")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["scores.npz"]  # no temporary left behind
