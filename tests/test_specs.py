"""The training loops' typed settings: built from a Config, through Ray's plain dicts and back
unchanged, under the Config's own names."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ghns.config import Config
from ghns.rundir import RunDir
from ghns.train.specs import (ImageClassifierSpec, LocalizerSpec, ModelSpec, OptimSpec,
                              PartNetworksSpec, PartsClassifierSpec, Spec, WorkerSpec,
                              to_loop_config, worker_of)

# fields that are not Config settings: the run's files, what the stage derives, the model's shape
NOT_CONFIG = {"catalog", "localization", "output", "embeddings", "negatives", "init_from",
              "trunks", "trunk_blocks", "num_classes", "frozen_blocks", "image_size", "crop", "use_negatives",
              "lr", "epochs", "parts"}
# the localizer trains with AdamW, weight decay 1e-4 and a one-cycle schedule whatever the Config
# says for stages 1 and 3: its OptimSpec keeps the defaults
FIXED = {("LocalizerSpec", f"optim.{k}") for k in ("optimizer", "weight_decay", "lr_step_epochs", "lr_gamma")}


def _specs(tmp_path) -> list[Spec]:
    cfg = Config(run_dir=str(tmp_path / "run"), lambda_image=0.7, part_area=0.3, triplet_margin=0.4,
                 lr_step_epochs=7, stage3_lr=0.002)
    run = RunDir(cfg.run_dir)
    return [LocalizerSpec.from_config(cfg, run, 20),
            PartNetworksSpec.from_config(cfg, run, 20),
            ImageClassifierSpec.from_config(cfg, run, 20, crop="object", seed=3, output=run.train_final / "o.pt"),
            PartsClassifierSpec.from_config(cfg, run, 20, use_negatives=True, output=run.train_final / "p.pt")]


def _leaves(spec) -> dict:
    out = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in _leaves(value).items()})
        else:
            out[f.name] = value
    return out


def test_specs_survive_rays_plain_dicts(tmp_path):
    worker = WorkerSpec(history_file="h.json", epochs=4, report_seconds=0.0)
    for spec in _specs(tmp_path):
        config = json.loads(json.dumps(to_loop_config(spec, worker)))  # what Ray Train may carry
        assert type(spec).of(config) == spec
        assert worker_of(config) == worker


def test_spec_fields_carry_the_config_names_and_values(tmp_path):
    cfg = Config(run_dir=str(tmp_path / "run"), lambda_image=0.7, part_area=0.3, triplet_margin=0.4,
                 lr_step_epochs=7, stage3_lr=0.002)
    config_names = {f.name for f in dataclasses.fields(Config)}
    for spec in _specs(tmp_path):
        for path, value in _leaves(spec).items():
            name = path.split(".")[-1]
            if name in NOT_CONFIG or path.startswith("model.") or (type(spec).__name__, path) in FIXED:
                continue
            assert name in config_names, f"{type(spec).__name__}.{path} is not a Config name"
            if name != "seed":  # the seed-ensemble members add their offset
                assert value == getattr(cfg, name), path
    image = _specs(tmp_path)[2]
    assert isinstance(image, ImageClassifierSpec)
    assert (image.lambda_image, image.optim.lr, image.optim.lr_step_epochs) == (0.7, 0.002, 7)


def test_unknown_settings_are_refused():
    with pytest.raises(TypeError, match="unknown settings"):
        OptimSpec.from_dict({"lr": 0.1, "epochs": 2, "lr_step": 5})  # the old, renamed key
    with pytest.raises(TypeError):
        ModelSpec.from_dict({"backbone": "tiny_cnn"})  # missing fields


def test_image_classifiers_see_the_size_their_localizer_start_was_trained_at(tmp_path):
    cfg = Config(run_dir=str(tmp_path / "run"))
    assert cfg.resolved_localize_size() == 80  # the synthetic default's 96 px renders, at most 80
    assert Config(synthetic_image_size=48).resolved_localize_size() == 48
    assert Config(localize_image_size=72).resolved_localize_size() == 72
    assert Config(dataset="cub", root=str(tmp_path)).resolved_localize_size() == 224
    run = RunDir(cfg.run_dir)
    (run.path / "localize").mkdir(parents=True)
    (run.path / "localize" / "model.pt").write_bytes(b"")  # a localizer exists: the start
    spec = ImageClassifierSpec.from_config(cfg, run, 20, crop="whole", seed=0, output=run.train_final / "o.pt")
    assert spec.init_from and spec.model.image_size == 80
    # a run whose localizer was trained under the earlier rule (the renders' own 96 px) keeps it
    run.localization_json.write_text(json.dumps({"image_size": 96}))
    spec = ImageClassifierSpec.from_config(cfg, run, 20, crop="whole", seed=0, output=run.train_final / "o.pt")
    assert spec.model.image_size == 96


def test_part_crops_are_the_backbone_input_size_when_pretrained_and_half_of_it_from_scratch(tmp_path):
    root = str(tmp_path)
    # pretrained by default (Lite0's ImageNet weights): crops at the localizer's 224
    assert Config(dataset="cub", root=root).resolved_part_size() == 224
    assert Config(dataset="cub", root=root, backbone="resnet50").resolved_part_size() == 224
    assert Config(dataset="cub", root=root, localize_image_size=320).resolved_part_size() == 320
    assert Config(dataset="cub", root=root, pretrained=str(tmp_path / "w.pt")).resolved_part_size() == 224
    # from scratch: half the localizer's size, at least 48
    assert Config(dataset="cub", root=root, pretrained="none").resolved_part_size() == 112
    assert Config().resolved_part_size() == 48  # the synthetic default: tiny_cnn, 80 px localizer
    assert Config(localize_image_size=160).resolved_part_size() == 80
    # a size given wins
    assert Config(dataset="cub", root=root, part_image_size=96).resolved_part_size() == 96
    # the stage-1 spec carries it
    cfg = Config(dataset="cub", root=root)
    assert PartNetworksSpec.from_config(cfg, RunDir(tmp_path / "run"), 5).model.image_size == 224
