"""Checkpoints load as tensors and settings only: a pickled payload is refused and never runs."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from ghns.checkpoint import load_checkpoint
from ghns.errors import StageError


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_plain_checkpoint_loads(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.ones(2)}, "settings": {"lr": 0.1, "blocks": [1, 2], "name": "x"}}, path)
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.ones(2)) and state["settings"]["blocks"] == [1, 2]


def test_pickle_payload_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Payload(marker)}, f)
    with pytest.raises(StageError, match="evil.pt: refused"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.save({"model": Payload(marker)}, tmp_path / "evil2.pt")  # torch's own zip format
    marker.unlink(missing_ok=True)
    with pytest.raises(StageError, match="evil2.pt: refused"):
        load_checkpoint(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_an_older_format_is_refused_in_one_line(tmp_path):
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    torch.save({"model": {}, "settings": {"hidden": 4}}, old)  # no "format": format 1
    torch.save({"model": {}, "settings": {"format": 2}}, new)
    with pytest.raises(StageError) as err:
        load_checkpoint(old, format=("parts classifier", 2))
    assert "format 1" in str(err.value) and "--force" in str(err.value) and "\n" not in str(err.value)
    assert load_checkpoint(new, format=("parts classifier", 2))["settings"]["format"] == 2


def _settings():
    from ghns.train_final.parts import FORMAT
    from ghns.train_final.train import IMAGE_FORMAT

    model = {"backbone": "tiny_cnn", "pretrained": "none", "num_classes": 3, "frozen_blocks": 1,
             "image_size": 32}
    return {
        "localizer": model,
        "part_networks": {**model, "embedding_dim": 8, "discriminator_hidden": 16},
        "image_classifier": {**model, "crop": "whole", "format": IMAGE_FORMAT, "epoch_kept": -1},
        "parts_classifier": {"n_parts": 3, "part_dim": 8, "num_classes": 4, "hidden": 0, "format": FORMAT},
        "filternet": {"n_parts": 3, "embedding_dim": 8, "num_classes": 4, "hidden": 0},
    }


def test_every_model_kind_saves_and_loads_through_one_module(tmp_path):
    from ghns.checkpoint import KINDS, create_model, load_model, save_checkpoint

    settings = _settings()
    assert set(settings) == set(KINDS)
    for kind in KINDS:
        torch.manual_seed(0)
        model = create_model(kind, settings[kind])
        save_checkpoint(tmp_path / f"{kind}.pt", model, settings[kind])
        loaded, got = load_model(tmp_path / f"{kind}.pt", kind)
        assert got == settings[kind] and not loaded.training
        want = model.state_dict()
        assert loaded.state_dict().keys() == want.keys()
        assert all(torch.equal(loaded.state_dict()[k], want[k]) for k in want), kind
    with pytest.raises(ValueError, match="no model kind"):
        create_model("nope", {})


def test_older_files_load_or_are_refused_in_one_line(tmp_path):
    from ghns.checkpoint import create_model, load_model, save_checkpoint

    settings = _settings()
    net = create_model("filternet", settings["filternet"])
    torch.save({"model": net.state_dict(), **settings["filternet"]}, tmp_path / "old_filternet.pt")
    loaded, got = load_model(tmp_path / "old_filternet.pt", "filternet")  # settings beside the weights
    assert got == settings["filternet"]
    old = {k: v for k, v in settings["image_classifier"].items() if k != "format"}  # format 1
    save_checkpoint(tmp_path / "old.pt", create_model("image_classifier", old), old)
    with pytest.raises(StageError, match="older ghns"):
        load_model(tmp_path / "old.pt", "image_classifier")
