"""The stage registry: the run directory's bookkeeping, the pipeline and the CLI take their stage
names from it, and the bookkeeping it derives is the one every run directory was written with."""

from __future__ import annotations

import pytest

from ghns import rundir
from ghns.config import Config
from ghns.errors import StageError
from ghns.rundir import RunDir
from ghns.stages import NAMES, STAGES, before, stage


def test_bookkeeping_derived_from_the_registry_is_what_run_directories_hold():
    assert rundir.STAGES == ("catalog", "localize", "stage1", "generate", "stage3", "evaluate")
    assert rundir.STAGE_SECTIONS == {
        "catalog": ("data",),
        "localize": ("data", "localize"),
        "stage1": ("data", "localize", "stage1"),
        "generate": ("data", "localize", "stage1", "stage2"),
        "stage3": ("data", "localize", "stage1", "stage2", "stage3"),
        "evaluate": ("data", "localize", "stage1", "stage2", "stage3", "evaluate"),
    }
    assert rundir.RESUMABLE == ("localize", "stage1", "generate", "stage3")
    assert rundir.REDO_ON_CHANGE == ("evaluate",)


def test_every_stage_names_real_files_a_runner_and_a_command(tmp_path):
    from ghns.cli import app

    run = RunDir(tmp_path / "run")
    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    sections = {f.metadata.get("section") for f in Config.__dataclass_fields__.values()}
    for s in STAGES:
        for attr in (*s.needs, s.writes, *([s.figures] if s.figures else [])):
            assert str(getattr(run, attr)).startswith(str(run.path)), (s.name, attr)
        assert callable(s.runner())
        assert s.section in sections
        assert s.command is None or s.command in commands, s.command
        assert stage(s.name) is s and (s.command is None or stage(s.command) is s)
    with pytest.raises(KeyError):
        stage("stage2")  # a config section, not a stage


def test_a_missing_input_names_the_command_of_the_stage_before(tmp_path):
    cfg = Config(run_dir=str(tmp_path / "run"))
    run = RunDir(cfg.run_dir)
    for name in NAMES[1:]:
        with pytest.raises(StageError, match="is missing: ") as exc:
            run.begin(cfg, name)
        made_by = before(name)
        assert made_by is not None and made_by.hint in str(exc.value)
    with pytest.raises(StageError, match="run 'ghns train-parts' first"):
        run.begin(cfg, "generate")
