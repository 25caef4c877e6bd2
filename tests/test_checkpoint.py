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
