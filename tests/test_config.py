from __future__ import annotations

import dataclasses

import pytest
import yaml

from ghns.config import Config, resolve_config
from ghns.errors import ConfigError


def test_yaml_roundtrip(tmp_path):
    cfg = Config(dataset="cub", root="/data/cub", val_fraction=0.2, seed=3)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert Config.from_yaml(tmp_path / "c.yaml") == cfg


def test_yaml_keys_take_dashes_or_underscores(tmp_path):
    (tmp_path / "c.yaml").write_text("val-fraction: 0.3\nsynthetic_classes: 5\n")
    cfg = Config.from_yaml(tmp_path / "c.yaml")
    assert cfg.val_fraction == 0.3 and cfg.synthetic_classes == 5


def test_flags_override_file_override_saved_run(tmp_path):
    run = tmp_path / "run"
    Config(run_dir=str(run), seed=1, val_fraction=0.3, dataset="cub", root="/r").to_yaml(run / "config.yaml")
    (tmp_path / "c.yaml").write_text(f"run_dir: {run}\nseed: 2\n")
    cfg = resolve_config(str(tmp_path / "c.yaml"), {"val_fraction": 0.4, "root": None})
    assert (cfg.seed, cfg.val_fraction, cfg.dataset, cfg.root) == (2, 0.4, "cub", "/r")
    assert resolve_config(None, {"run_dir": str(run)}, use_run_dir=False).dataset == "synthetic"


@pytest.mark.parametrize("key,value,message", [
    ("val_fraction", 1.0, "'val_fraction' must be < 1.0, got 1.0"),
    ("val_fraction", "lots", "'val_fraction' must be a number, got 'lots'"),
    ("test_fraction", 0, "'test_fraction' must be > 0.0, got 0.0"),
    ("synthetic_classes", 2.5, "'synthetic_classes' must be an integer, got 2.5"),
    ("synthetic_classes", 65, "'synthetic_classes' must be <= 64, got 65"),
    ("dataset", "imagenet", "'dataset' must be one of synthetic, cub"),
    ("device", "tpu", "'device' must be one of auto, cpu, cuda"),
    ("seed", -1, "'seed' must be >= 0, got -1"),
    ("seed", True, "'seed' must be an integer, got True"),
    ("seed", 10**30, "'seed' must be <= 2147483647, got 1000000000000000000000000000000"),  # torch: Overflow
    ("synthetic_seed", 2**31, "'synthetic_seed' must be <= 2147483647"),
    ("val_fraction", float("nan"), "'val_fraction' must be a finite number"),
])
def test_bad_values_are_one_line_errors(key, value, message):
    with pytest.raises(ConfigError) as exc:
        Config().replace(**{key: value})
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_key_suggests_the_closest(tmp_path):
    (tmp_path / "c.yaml").write_text("val_fracton: 0.2\n")
    with pytest.raises(ConfigError, match="unknown key 'val_fracton' .*did you mean 'val_fraction'"):
        Config.from_yaml(tmp_path / "c.yaml")


def test_bad_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        Config.from_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml line .*not valid YAML"):
        Config.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        Config.from_yaml(tmp_path / "list.yaml")
    (tmp_path / "v.yaml").write_text("seed: -4\n")
    with pytest.raises(ConfigError, match="v.yaml: 'seed' must be >= 0"):
        Config.from_yaml(tmp_path / "v.yaml")


def test_every_field_has_help_and_a_section():
    for f in dataclasses.fields(Config):
        assert f.metadata["help"] and f.metadata["section"], f.name


def test_fusion_weights_are_checked_and_canonical():
    from ghns.config import Config
    from ghns.errors import ConfigError

    assert Config(fusion_weights="0.30, 0.3,0.4").fusion_weights == "0.3,0.3,0.4"
    assert Config(fusion_weights="0.3,0.3,0.4").resolved_fusion_weights() == (0.3, 0.3, 0.4)
    assert Config().resolved_fusion_weights() is None
    for bad in ("0.5,0.5", "0.5,0.6,0.1", "-0.1,0.6,0.5", "a,b,c"):
        with pytest.raises(ConfigError, match="fusion_weights"):
            Config(fusion_weights=bad)


def test_recorded_fingerprints_survive_new_and_moved_settings():
    from ghns.rundir import changed_keys

    new = {"tau": 0.95, "fusion_weights": None}
    assert changed_keys({"tau": 0.95}, new) == []  # a setting added later, left at its default
    assert changed_keys({"tau": 0.95, "fusion_step": 0.05}, {"tau": 0.95}) == []  # moved away
    assert changed_keys({"tau": 0.9}, new) == ["tau"]
    assert changed_keys({"tau": 0.95}, {"tau": 0.95, "fusion_weights": "1,0,0"}) == ["fusion_weights"]


def test_runs_saved_before_an_option_existed_keep_what_they_did(tmp_path):
    from ghns.rundir import changed_keys

    # part_area (the localizer's area loss) came after runs that trained without it
    assert Config().part_area == 30.0 and Config.value_before("part_area") == 0.0
    assert Config.value_before("tau") == Config().tau  # an option there from the start
    assert changed_keys({"part_separation": 5.0}, {"part_separation": 5.0, "part_area": 0.0}) == []
    assert changed_keys({"part_separation": 5.0},
                        {"part_separation": 5.0, "part_area": 30.0}) == ["part_area"]

    run = tmp_path / "run"
    saved = Config(run_dir=str(run)).to_dict()
    del saved["part_area"]
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert resolve_config(overrides={"run_dir": str(run)}).part_area == 0.0
    assert resolve_config(overrides={"run_dir": str(run), "part_area": 12.0}).part_area == 12.0
    assert resolve_config(overrides={"run_dir": str(tmp_path / "new")}).part_area == 30.0


def test_config_choices_name_exactly_the_registered_backbones_and_datasets():
    """The config lists them without importing torch (the CLI starts fast); the registries are
    the truth, and a backbone or dataset added to one must be added to the other."""
    import ghns.data  # noqa: F401 - registers the readers
    from ghns.config import BACKBONE_NAMES, DATASETS
    from ghns.data.registry import READERS
    from ghns.models.backbones import BACKBONES

    assert set(BACKBONE_NAMES) == set(BACKBONES)
    assert set(DATASETS) == set(READERS)
