"""Loading checkpoints a run directory holds, without running code from them.

Every checkpoint ghns writes is tensors and plain settings (dicts, lists, numbers, strings), so
it loads with ``torch.load(weights_only=True)``: a file carrying any other pickled object (for
instance one made to run code when unpickled) is refused with one line naming it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ghns.errors import StageError


def save_checkpoint(path: str | Path, model, settings: dict[str, Any]) -> None:
    """``{"model": model's state dict, "settings": settings}`` to ``path``, atomically: the one
    layout every model file of a run has (``load_checkpoint`` reads it)."""
    import torch

    from ghns.rundir import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "settings": settings}, tmp)


def load_checkpoint(path: str | Path, map_location: str = "cpu",
                    format: tuple[str, int] | None = None) -> Any:
    """The checkpoint in ``path``. With ``format=(what, n)`` its ``settings["format"]`` must be
    ``n`` (checkpoints without one are format 1): an older model is refused in one line."""
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageError(f"{path}: refused, not a plain ghns checkpoint (tensors and settings only): "
                         f"{first[:200]}") from None
    if format is not None:
        what, wanted = format
        found = state.get("settings", {}).get("format", 1)
        if found != wanted:
            raise StageError(f"{path} was made by an older ghns ({what} format {found}, this one "
                             f"reads {wanted}): rerun 'ghns train-final --force'")
    return state
