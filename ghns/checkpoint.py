"""The models of a run: built, saved and loaded in one place, without running code from files.

Every model file ghns writes is ``{"model": state dict, "settings": plain settings}``
(``save_checkpoint``), and every model is built from those settings by ``create_model(kind,
settings)`` and loaded by ``load_model(path, kind)``: the localizer, the part networks, FilterNet,
the original / object classifiers and the parts classifier. Files hold tensors and plain settings
(dicts, lists, numbers, strings) only, so they load with ``torch.load(weights_only=True)``: a file
carrying any other pickled object (for instance one made to run code when unpickled) is refused
with one line naming it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ghns.atomic import atomic_path, check_format, load_torch, save_torch
from ghns.errors import StageError
from ghns.models.registry import create_model, kinds, model_format

__all__ = ["create_model", "load_checkpoint", "load_model", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "KINDS":  # every model kind a run saves (importing the model files: only when asked)
        return kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def save_checkpoint(path: str | Path, model, settings: dict[str, Any]) -> None:
    """``{"model": model's state dict, "settings": settings}`` to ``path``, atomically: the one
    layout every model file of a run has (``load_checkpoint`` reads it)."""
    with atomic_path(path) as tmp:
        save_torch({"model": model.state_dict(), "settings": settings}, tmp)


def load_checkpoint(path: str | Path, map_location: str = "cpu",
                    format: tuple[str, int] | None = None) -> Any:
    """The checkpoint in ``path``. With ``format=(what, n)`` its ``settings["format"]`` must be
    ``n`` (checkpoints without one are format 1): an older model is refused in one line."""
    try:
        state = load_torch(path, map_location)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageError(f"{path}: refused, not a plain ghns checkpoint (tensors and settings only): "
                         f"{first[:200]}") from None
    if format is not None:
        what, wanted = format
        found = state.get("settings", {}).get("format", 1)
        check_format(Path(path), what, found, wanted)  # a newer one: "upgrade ghns"
        if found != wanted:
            raise StageError(f"{path} was made by an older ghns ({what} format {found}, this one "
                             f"reads {wanted}): rerun 'ghns train-final --force'")
    return state


def load_model(path: str | Path, kind: str):
    """``(model in eval mode, its settings)`` from a file ``save_checkpoint`` wrote (FilterNet
    files of older runs kept their settings beside the weights: read too)."""
    state = load_checkpoint(path, format=model_format(kind))
    settings = state.get("settings")
    if settings is None:
        settings = {k: v for k, v in state.items() if k != "model"}
    model = create_model(kind, settings)
    model.load_state_dict(state["model"])
    return model.eval(), settings
