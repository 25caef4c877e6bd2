"""Stages in order (``ghns.stages``), each run only when its outputs are missing (or when forced).

A stage command runs the stages before it that are not done yet, then itself; ``ghns pipeline``
runs them all. ``force`` applies to the named stage only, never silently to its inputs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from ghns.rundir import RunDir
from ghns.stages import NAMES
from ghns.stages import stage as stage_record

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)


def run_catalog(cfg: Config, force: bool = False):
    """The catalog stage: every image of the dataset with its split, label and boxes."""
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


# Called as hook(cfg, stage_name) after each stage of ``run_until`` (e.g. the Ray job's upload
# of the run directory to remote storage).
AFTER_STAGE: list[Callable[[Any, str], None]] = []


def run_until(cfg: Config, stage: str, force: bool = False) -> Any:
    """Run every stage up to and including ``stage`` (``ghns.stages``); return the
    last stage's result."""
    from ghns.rundir import fingerprint

    stage = stage_record(stage).name
    run = RunDir(cfg.run_dir)
    chain = list(NAMES[: NAMES.index(stage) + 1])
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
            result = stage_record(name).runner()(cfg, force and name == stage)
            for hook in AFTER_STAGE:
                hook(cfg, name)
    return result
