"""Which model a checkpoint holds, and how to build it: a registry filled by the model files.

Each model file registers a builder for its kind (``@register_model(kind, format=...)``); a builder
takes the plain settings a checkpoint records and the backbone weights to start from.
``create_model(kind, settings)`` finds the builder, ``model_format(kind)`` the settings format a
file of that kind must have. Nothing here imports training code: the checkpoint module and every
stage build their models through this one table (after timm's ``register_model`` /
``create_model``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

MODEL_FILES = ("ghns.models.localizer", "ghns.models.parts", "ghns.models.classifiers")
_BUILDERS: dict[str, Callable[..., Any]] = {}
_FORMATS: dict[str, tuple[str, int] | None] = {}


def register_model(kind: str, format: tuple[str, int] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make the decorated ``builder(settings, pretrained=None)`` the one for ``kind``; ``format``:
    ``(what, n)``, the ``settings["format"]`` a saved file of this kind must carry (None: any)."""
    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        if kind in _BUILDERS and _BUILDERS[kind] is not builder:
            raise ValueError(f"model kind {kind!r} is registered twice")
        _BUILDERS[kind], _FORMATS[kind] = builder, format
        return builder
    return decorate


def _registered() -> dict[str, Callable[..., Any]]:
    for module in MODEL_FILES:  # each fills the table as it is imported
        importlib.import_module(module)
    return _BUILDERS


def kinds() -> tuple[str, ...]:
    return tuple(_registered())


def create_model(kind: str, settings: dict[str, Any], pretrained: str = "none"):
    """The model of ``kind`` that ``settings`` (what its file records) describe, with
    ``pretrained`` backbone weights ("none": random, to be overwritten by a state dict)."""
    builders = _registered()
    if kind not in builders:
        raise ValueError(f"no model kind {kind!r} (kinds: {', '.join(builders)})")
    return builders[kind](settings, pretrained=pretrained)


def model_format(kind: str) -> tuple[str, int] | None:
    """The settings format a file of ``kind`` must have (None: any)."""
    _registered()
    return _FORMATS.get(kind)
