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


KINDS = ("localizer", "part_networks", "filternet", "image_classifier", "parts_classifier")


def create_model(kind: str, settings: dict[str, Any], pretrained: str = "none"):
    """The model of ``kind`` that ``settings`` (what its file records) describe, with
    ``pretrained`` backbone weights ("none": random, to be overwritten by a state dict)."""
    if kind == "localizer":
        from ghns.localize.train import build_localizer

        return build_localizer(settings, pretrained=pretrained)
    if kind == "part_networks":
        from ghns.stage1.train import build_parts

        return build_parts(settings, pretrained=pretrained)
    if kind == "image_classifier":
        from ghns.stage3.train import build_image_classifier

        return build_image_classifier(settings, pretrained=pretrained)
    if kind == "parts_classifier":
        from ghns.models.classifiers import PartsClassifier

        return PartsClassifier(settings["n_parts"], settings["part_dim"], settings["num_classes"],
                               settings["hidden"])
    if kind == "filternet":
        from ghns.models.parts import FilterNet

        return FilterNet(settings["n_parts"], settings["embedding_dim"], settings["num_classes"],
                         settings["hidden"])
    raise ValueError(f"no model kind {kind!r} (kinds: {', '.join(KINDS)})")


def _format(kind: str) -> tuple[str, int] | None:
    """The settings format a file of ``kind`` must have (None: any)."""
    if kind == "image_classifier":
        from ghns.stage3.train import IMAGE_FORMAT

        return ("image classifier", IMAGE_FORMAT)
    if kind == "parts_classifier":
        from ghns.stage3.parts import FORMAT

        return ("parts classifier", FORMAT)
    return None


def load_model(path: str | Path, kind: str):
    """``(model in eval mode, its settings)`` from a file ``save_checkpoint`` wrote (FilterNet
    files of older runs kept their settings beside the weights: read too)."""
    state = load_checkpoint(path, format=_format(kind))
    settings = state.get("settings")
    if settings is None:
        settings = {k: v for k, v in state.items() if k != "model"}
    model = create_model(kind, settings)
    model.load_state_dict(state["model"])
    return model.eval(), settings
