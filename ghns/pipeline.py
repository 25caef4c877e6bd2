"""Stages in order, each run only when its outputs are missing (or when forced).

A stage command runs the stages before it that are not done yet, then itself; ``ghns pipeline``
runs them all. ``force`` applies to the named stage only, never silently to its inputs.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ghns.rundir import RunDir

log = logging.getLogger(__name__)


def _catalog(cfg, force: bool):
    from ghns.data import Catalog, build_catalog
    from ghns.rundir import fingerprint

    run = RunDir(cfg.run_dir)
    fp = fingerprint(cfg, "catalog")
    if run.catalog.is_file() and run.is_done("catalog", fp, force):
        log.info("catalog: done already (%s)", run.catalog)
        return Catalog.read(run.catalog)
    with run.stage("catalog", fp):
        catalog = build_catalog(cfg)
        catalog.write(run.catalog)
    return catalog


def _localize(cfg, force: bool):
    from ghns.localize.stage import run_localize

    return run_localize(cfg, force=force)


def _stage1(cfg, force: bool):
    from ghns.stage1.stage import run_stage1

    return run_stage1(cfg, force=force)


def _generate(cfg, force: bool):
    from ghns.stage2.stage import run_generate

    return run_generate(cfg, force=force)


def _stage3(cfg, force: bool):
    from ghns.stage3.stage import run_stage3

    return run_stage3(cfg, force=force)


def _evaluate(cfg, force: bool):
    from ghns.stage3.evaluate import run_evaluate

    return run_evaluate(cfg, force=force)


STAGE_FUNCS: dict[str, Callable[[Any, bool], Any]] = {
    "catalog": _catalog,
    "localize": _localize,
    "stage1": _stage1,
    "generate": _generate,
    "stage3": _stage3,
    "evaluate": _evaluate,
}


# Called as hook(cfg, stage_name) after each stage of ``run_until`` (e.g. the Ray job's upload
# of the run directory to remote storage).
AFTER_STAGE: list[Callable[[Any, str], None]] = []


def run_until(cfg, stage: str, force: bool = False) -> Any:
    """Run every stage up to and including ``stage``; return the last stage's result."""
    from ghns.rundir import fingerprint

    run = RunDir(cfg.run_dir)
    chain = list(STAGE_FUNCS)[: list(STAGE_FUNCS).index(stage) + 1]
    with run.locked():  # one process per run directory; a second one stops here with one line
        done = run.stages()
        for name in chain:  # refuse changed settings before anything runs or is saved
            forced = force and name == stage
            if name in done and not forced:
                run.is_done(name, fingerprint(cfg, name))
            run.check_partial(name, fingerprint(cfg, name), forced)
        cfg.to_yaml(run.config)
        result = None
        for name in chain:
            result = STAGE_FUNCS[name](cfg, force and name == stage)
            for hook in AFTER_STAGE:
                hook(cfg, name)
    return result
