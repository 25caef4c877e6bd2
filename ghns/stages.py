"""The pipeline's stages, in order: one record each. The run directory's bookkeeping (order,
config sections, which stages resume), the pipeline, the CLI's stage commands, the sweep spaces
and the log lines take their names from here.

A stage has one name everywhere: its CLI command (``ghns train-parts``), its record in
``stages.json``, its folder and figures in the run directory (``train-parts/``,
``train-parts.json``), its config section, its log lines (``train-parts: done already``) and its
package (``ghns.train_parts``, ``ghns.generate``, ``ghns.train_final``, ``ghns.evaluate``). The
paper's numbering (stage 1, 2, 3) survives in docstrings and in a few settings named after it
(``stage1_epochs``). Run directories made before this had ``stage1`` and ``stage3`` records and
folders; ``ghns.rundir`` reads them under today's names (``LEGACY``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    name: str                   # the CLI command, record in stages.json, config section
    cli: bool                   # a CLI command of its own (False: only ``ghns pipeline`` runs it)
    run: str                    # "module:function", called as function(cfg, force)
    needs: tuple[str, ...] = ()  # RunDir attributes of the files it reads from the stage before
    writes: str = ""            # RunDir attribute of the file whose presence means it is done
    figures: str = ""           # RunDir attribute of its figures (JSON)
    resumable: bool = False     # an interrupted run resumes its checkpoints, models or shards
    redo_on_change: bool = False  # changed settings re-run it (it takes seconds) instead of refusing
    summary: str = ""           # its command's help line

    @property
    def hint(self) -> str:
        """How a person makes this stage's outputs."""
        return f"run 'ghns {self.name}' first" if self.cli else \
            f"run the {self.name} stage first (ghns pipeline)"

    def runner(self) -> Callable[[Any, bool], Any]:
        module, function = self.run.split(":")
        return getattr(importlib.import_module(module), function)


STAGES: tuple[Stage, ...] = (
    Stage("catalog", False, "ghns.pipeline:run_catalog", writes="catalog"),
    Stage("localize", True, "ghns.localize.stage:run_localize", needs=("catalog",),
          writes="localization", figures="localization_json", resumable=True,
          summary="Object boxes and three part boxes per image, learned from class labels alone."),
    Stage("train-parts", True, "ghns.train_parts.stage:run_train_parts",
          needs=("localization",), writes="train_parts_json", figures="train_parts_json", resumable=True,
          summary="Stage 1: three part networks (cls + triplet + adversarial), the embedding table, FilterNet."),
    Stage("generate", True, "ghns.generate.stage:run_generate",
          needs=("embeddings", "filternet"), writes="generate_json", figures="generate_json",
          resumable=True,
          summary="Stage 2: hard negatives by part shuffling, FAISS priority and FilterNet, per class."),
    Stage("train-final", True, "ghns.train_final.stage:run_train_final",
          needs=("generate_json",), writes="train_final_json", figures="train_final_json", resumable=True,
          summary="Stage 3: parts classifier with hard negatives (quadruplet), original and object classifiers."),
    Stage("evaluate", True, "ghns.evaluate:run_evaluate", needs=("train_final_json",),
          writes="report_json", figures="report_json", redo_on_change=True,
          summary="Scores on val and test, fusion weights chosen on val, report.json / report.md / figures."),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)  # pipeline order


def stage(name: str) -> Stage:
    """The stage ``name``."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r} (stages: {', '.join(NAMES)})")


def before(name: str) -> Stage | None:
    """The stage that runs just before ``name`` (None for the first)."""
    i = NAMES.index(name)
    return STAGES[i - 1] if i else None


def sections(name: str) -> tuple[str, ...]:
    """The config sections ``name`` depends on: its own and every earlier stage's."""
    return NAMES[: NAMES.index(name) + 1]
