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
    assert rundir.STAGES == ("catalog", "localize", "train-parts", "generate", "train-final", "evaluate")
    assert rundir.STAGE_SECTIONS == {
        "catalog": ("catalog",),
        "localize": ("catalog", "localize"),
        "train-parts": ("catalog", "localize", "train-parts"),
        "generate": ("catalog", "localize", "train-parts", "generate"),
        "train-final": ("catalog", "localize", "train-parts", "generate", "train-final"),
        "evaluate": ("catalog", "localize", "train-parts", "generate", "train-final", "evaluate"),
    }
    assert rundir.RESUMABLE == ("localize", "train-parts", "generate", "train-final")
    assert rundir.REDO_ON_CHANGE == ("evaluate",)


def test_every_stage_has_one_name_for_its_files_runner_section_and_command(tmp_path):
    from ghns.cli import app

    run = RunDir(tmp_path / "run")
    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    sections = {f.metadata.get("section") for f in Config.__dataclass_fields__.values()}
    for s in STAGES:
        for attr in (*s.needs, s.writes, *([s.figures] if s.figures else [])):
            assert str(getattr(run, attr)).startswith(str(run.path)), (s.name, attr)
        assert callable(s.runner())
        assert s.name in sections  # its settings' config section
        assert (s.name in commands) == s.cli, s.name
        assert stage(s.name) is s
    assert sections - set(NAMES) == {"run"}  # every other section is a stage's
    for old in ("stage1", "stage2", "stage3"):
        with pytest.raises(KeyError):
            stage(old)


def test_a_run_directory_of_the_older_stage_names_is_read_under_todays(tmp_path):
    """Before each stage had one name, stage 1 and 3 were recorded (and kept their files) as
    ``stage1`` / ``stage3``: such a run reads as done, its files found where they are."""
    import json

    from ghns.rundir import PARTIAL, STALE

    run = RunDir(tmp_path / "old")
    (run.path / "stage1").mkdir(parents=True)
    (run.path / "stage1" / "parts.pt").write_bytes(b"x")
    (run.path / "stage3").mkdir()
    (run.path / "stage3.json").write_text("{}")
    run.stages_file.write_text(json.dumps({"localize": {"seconds": 1}, "stage1": {"seconds": 2},
                                           PARTIAL: {"stage3": {"seed": 0}}, STALE: ["stage3"]}))
    stages = run.stages()
    assert set(stages) == {"localize", "train-parts", PARTIAL, STALE}
    assert stages[PARTIAL] == {"train-final": {"seed": 0}} and stages[STALE] == ["train-final"]
    assert run.part_networks == run.path / "stage1" / "parts.pt"
    assert run.train_final == run.path / "stage3" and run.train_final_json == run.path / "stage3.json"
    assert run.train_parts_json == run.path / "train-parts.json"  # not there in either name: today's
    new = RunDir(tmp_path / "new")
    assert new.train_parts == new.path / "train-parts" and new.train_final == new.path / "train-final"


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
