"""The pipeline's stages, in order: one record each. The run directory's bookkeeping (order,
config sections, which stages resume), the pipeline, the CLI's stage commands and their log lines
take their names from here.

A stage has two names, kept apart on purpose: ``name`` is its record in ``stages.json`` (and the
folder of its files, ``stage1/``, ``stage3/``), fixed so that every run directory made so far
stays readable; ``command`` is what a person types and reads (``ghns train-parts``; the log says
``train-parts: done already``). The paper's numbering survives only in ``name`` and in the config
sections (``stage1``, ``stage2``, ``stage3``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    name: str                   # record in stages.json, fingerprint key
    command: str | None         # the CLI command (None: only ``ghns pipeline`` runs it)
    section: str                # the config section of its own settings
    run: str                    # "module:function", called as function(cfg, force)
    needs: tuple[str, ...] = ()  # RunDir attributes of the files it reads from the stage before
    writes: str = ""            # RunDir attribute of the file whose presence means it is done
    figures: str = ""           # RunDir attribute of its figures (JSON)
    resumable: bool = False     # an interrupted run resumes its checkpoints, models or shards
    redo_on_change: bool = False  # changed settings re-run it (it takes seconds) instead of refusing

    @property
    def label(self) -> str:
        """Its name in log lines: the command a person types."""
        return self.command or self.name

    @property
    def hint(self) -> str:
        """How a person makes this stage's outputs."""
        return f"run 'ghns {self.command}' first" if self.command else \
            f"run the {self.name} stage first (ghns pipeline)"

    def runner(self) -> Callable[[Any, bool], Any]:
        module, function = self.run.split(":")
        return getattr(importlib.import_module(module), function)


STAGES: tuple[Stage, ...] = (
    Stage("catalog", None, "data", "ghns.pipeline:run_catalog", writes="catalog"),
    Stage("localize", "localize", "localize", "ghns.localize.stage:run_localize", needs=("catalog",),
          writes="localization", figures="localization_json", resumable=True),
    Stage("stage1", "train-parts", "stage1", "ghns.stage1.stage:run_stage1", needs=("localization",),
          writes="stage1_json", figures="stage1_json", resumable=True),
    Stage("generate", "generate", "stage2", "ghns.stage2.stage:run_generate",
          needs=("embeddings", "filternet"), writes="generate_json", figures="generate_json",
          resumable=True),
    Stage("stage3", "train-final", "stage3", "ghns.stage3.stage:run_stage3", needs=("generate_json",),
          writes="stage3_json", figures="stage3_json", resumable=True),
    Stage("evaluate", "evaluate", "evaluate", "ghns.stage3.evaluate:run_evaluate", needs=("stage3_json",),
          writes="report_json", figures="report_json", redo_on_change=True),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)  # pipeline order


def stage(name: str) -> Stage:
    """The stage recorded as ``name`` (or run by the command ``name``)."""
    for s in STAGES:
        if name in (s.name, s.command):
            return s
    raise KeyError(f"no stage {name!r} (stages: {', '.join(NAMES)})")


def before(name: str) -> Stage | None:
    """The stage that runs just before ``name`` (None for the first)."""
    i = NAMES.index(name)
    return STAGES[i - 1] if i else None


def sections(name: str) -> tuple[str, ...]:
    """The config sections ``name`` depends on: its own and every earlier stage's."""
    return tuple(s.section for s in STAGES[: NAMES.index(name) + 1])
