from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import typer

from ghns.cli import app
from ghns.config import Config
from tests.conftest import TINY_SYNTHETIC
from tests.data.test_cub import make_cub

COMMANDS = ["pipeline", "localize", "train-parts", "generate", "train-final", "evaluate",
            "predict", "sweep", "study", "show", "data"]


def test_help_lists_every_command(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for name in COMMANDS:
        assert f"  {name} " in out


NON_CONFIG = {"config", "force", "help", "rows", "out", "top", "reject", "reject_score",  # command switches, not run settings
              "space", "trials", "scheduler", "concurrent",  # sweep's own
              "seeds", "tau_grid", "per_class_grid", "train_per_class", "part_networks_lr"}  # study's own


def test_every_config_flag_is_a_config_key():
    """Flags are generated from Config: each option that is not --config/--force names a key."""
    keys = set(Config.keys())
    command = typer.main.get_command(app)

    def walk(cmd):
        if hasattr(cmd, "commands"):
            for sub in cmd.commands.values():
                yield from walk(sub)
        else:
            yield cmd

    seen = set()
    for cmd in walk(command):
        for p in cmd.params:
            if p.param_type_name == "option" and p.name not in NON_CONFIG:
                assert p.name in keys, (cmd.name, p.name)
                assert p.opts[0] == "--" + p.name.replace("_", "-")
                seen.add(p.name)
    assert seen == keys  # and every key is reachable from some command


def test_data_info_prints_classes_and_counts(cli, tmp_path):
    make_cub(tmp_path)
    code, out, err = cli("data", "info", "--dataset", "cub", "--root", tmp_path, "--val-fraction", "0.34")
    assert code == 0, err
    assert "3 classes" in out and "002.Laysan_Albatross" in out
    total = [line for line in out.splitlines() if line.strip().startswith("total")][0]
    assert total.split()[1:] == ["6", "3", "9"]


def test_data_info_reports_skipped_images(cli, tmp_path):
    cub = make_cub(tmp_path)
    victim = next((cub / "images").rglob("*.jpg"))
    victim.write_bytes(b"")
    code, out, err = cli("data", "info", "--dataset", "cub", "--root", tmp_path)
    assert code == 0
    assert "skipped images: 1 (1 empty)" in out
    assert str(victim) in err  # the skip is logged with its path


@pytest.mark.parametrize("args,message", [
    (["data", "info", "--dataset", "imagenet"], "'dataset' must be one of"),
    (["data", "info", "--dataset", "cub"], "--root is required for dataset 'cub'"),
    (["data", "info", "--dataset", "cub", "--root", "/no/such/dir"], "dataset root not found: /no/such/dir"),
    (["data", "info", "--val-fraction", "2"], "'val_fraction' must be < 1.0, got 2.0"),
    (["data", "info", "--val-fraction", "abc"], "Invalid value for '--val-fraction'"),
    (["data", "info", "--no-such-flag"], "No such option: --no-such-flag"),
    (["data", "info", "--config", "/no/such.yaml"], "config file not found: /no/such.yaml"),
    (["nonsense"], "No such command 'nonsense'"),
])
def test_user_mistakes_are_one_line_exit_2(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err + out


def test_malformed_label_file_exit_2(cli, tmp_path):
    cub = make_cub(tmp_path)
    (cub / "classes.txt").write_text("1 001.A\nfoo\n")
    code, _, err = cli("data", "info", "--dataset", "cub", "--root", cub)
    assert code == 2 and "classes.txt line 2: expected '<class_id> <name>', got 'foo'" in err


@pytest.mark.slow
def test_stage_commands_skip_done_stages_and_refuse_changed_settings(cli, ray_session, tmp_path):
    run = tmp_path / "run"
    args = ["localize", "--run-dir", run, *TINY_SYNTHETIC]
    code, out, err = cli(*args)
    assert code == 0, err
    assert (run / "catalog.parquet").is_file() and (run / "config.yaml").is_file()
    assert (run / "localization.parquet").is_file()
    code, out, err = cli(*args)
    assert code == 0 and "catalog: done already" in err and "localize: done already" in err
    code, out, err = cli("localize", "--run-dir", run, "--seed", "5")
    assert code == 2 and "already holds stage 'catalog' run with other settings (seed: 0 -> 5)" in err
    code, out, err = cli("localize", "--run-dir", run, "--cam-threshold", "0.5")
    assert code == 2 and "stage 'localize' run with other settings (cam_threshold: 0.2 -> 0.5)" in err
    saved = Config.from_yaml(run / "config.yaml")
    assert saved.seed == 0 and saved.cam_threshold == 0.2  # refused settings were not saved
    code, out, err = cli("localize", "--run-dir", run, "--cam-threshold", "0.5", "--force")
    assert code == 0, err
    assert Config.from_yaml(run / "config.yaml").cam_threshold == 0.5
    assert Config.from_yaml(run / "config.yaml").synthetic_classes == 4  # the rest kept from the run


def test_console_script_exit_code(tmp_path):
    """The installed entry point: a real process, a real exit code, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "ghns", "data", "info", "--dataset", "cub",
                           "--root", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: dataset root not found: {tmp_path / 'missing'}"


def test_a_command_lists_the_settings_it_uses_and_still_reads_the_others(cli):
    code, out, _ = cli("show", "negatives", "--help")
    assert code == 0 and "--run-dir" in out and "--rows" in out
    for flag in ("--workers", "--amp", "--batch-size", "--tau", "--parts-epochs"):
        assert flag not in out, flag
    code, out, _ = cli("train-final", "--help")
    assert code == 0 and "--parts-epochs" in out and "--dataset" in out and "--workers" in out
    assert "--stage1-epochs" not in out and "--tau" not in out and "ghns config --help" in out
    code, out, _ = cli("config", "--help")
    assert "--stage1-epochs" in out and "--tau" in out and "--parts-epochs" in out
    # a flag that is not listed is still an option of the command: its value is checked, not refused
    code, _, err = cli("train-final", "--run-dir", "/nonexistent/ghns-run", "--stage1-epochs", "-3")
    assert code == 2 and "No such option" not in err and "stage1" in err.replace("-", "_")
