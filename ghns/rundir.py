"""The run directory: where every stage reads its inputs and writes its outputs.

A stage is done when its outputs exist and ``stages.json`` records it with the fingerprint of
the configuration it ran under (the config keys it depends on). Running a done stage again is a
skip; running it under a different fingerprint is an error that names the differing keys, unless
``force`` (then it runs again and later stages are marked stale).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ghns.errors import StageError

log = logging.getLogger(__name__)

# Stages in pipeline order, with the config sections each one depends on (its own and upstream).
STAGES = ("catalog", "localize", "stage1", "generate", "stage3", "evaluate")  # pipeline order
STAGE_SECTIONS = {
    "catalog": ("data",),
    "localize": ("data", "localize"),
    "stage1": ("data", "localize", "stage1"),
    "generate": ("data", "localize", "stage1", "stage2"),
    "stage3": ("data", "localize", "stage1", "stage2", "stage3"),
    "evaluate": ("data", "localize", "stage1", "stage2", "stage3", "evaluate"),
}


# Stages that only read what earlier stages made and take seconds: changed settings re-run them
# instead of being refused (e.g. fixed fusion weights from a sweep).
REDO_ON_CHANGE = ("evaluate",)


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    # -- well-known paths -------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def catalog(self) -> Path:
        return self.path / "catalog.parquet"

    @property
    def localization(self) -> Path:
        return self.path / "localization.parquet"

    @property
    def localization_json(self) -> Path:
        return self.path / "localization.json"

    @property
    def stage1_json(self) -> Path:
        return self.path / "stage1.json"

    @property
    def part_networks(self) -> Path:
        return self.path / "stage1" / "parts.pt"

    @property
    def filternet(self) -> Path:
        return self.path / "stage1" / "filternet.pt"

    @property
    def embeddings(self) -> Path:
        return self.path / "embeddings.parquet"

    @property
    def negatives(self) -> Path:
        return self.path / "negatives"

    @property
    def generate_json(self) -> Path:
        return self.path / "generate.json"

    @property
    def stage3(self) -> Path:
        return self.path / "stage3"

    @property
    def stage3_json(self) -> Path:
        return self.path / "stage3.json"

    @property
    def scores(self) -> Path:
        return self.path / "scores"

    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def stages_file(self) -> Path:
        return self.path / "stages.json"

    # -- stage bookkeeping ------------------------------------------------------------------
    def stages(self) -> dict[str, Any]:
        if not self.stages_file.is_file():
            return {}
        return json.loads(self.stages_file.read_text())

    def _write_stages(self, stages: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.stages_file.with_name(self.stages_file.name + ".tmp")
        tmp.write_text(json.dumps(stages, indent=2, sort_keys=True))
        tmp.replace(self.stages_file)

    def is_done(self, stage: str, fingerprint: dict[str, Any], force: bool = False) -> bool:
        """Whether ``stage`` can be skipped; a done stage with another fingerprint is an error."""
        record = self.stages().get(stage)
        if record is None or force:
            return False
        old = record.get("fingerprint", {})
        keys = changed_keys(old, fingerprint)
        if keys and stage in REDO_ON_CHANGE:
            log.info("%s: settings changed (%s): running it again", stage, ", ".join(keys))
            return False
        if keys:
            changes = ", ".join(f"{k}: {recorded_value(old, k)!r} -> {fingerprint.get(k)!r}"
                                for k in keys[:4])
            raise StageError(f"{self.path} already holds stage '{stage}' run with other settings "
                             f"({changes}); pass --force to redo it or use another --run-dir")
        return True

    @contextmanager
    def stage(self, name: str, fingerprint: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Run a stage: on success record it with its fingerprint and wall time; later stages
        that were done become stale (removed from the record) since their inputs changed."""
        start = time.perf_counter()
        extra: dict[str, Any] = {}
        yield extra
        stages = self.stages()
        for later in STAGES[STAGES.index(name) + 1:]:
            stages.pop(later, None)
        stages[name] = {"fingerprint": fingerprint, "seconds": round(time.perf_counter() - start, 3),
                        **extra}
        self._write_stages(stages)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file of this process, then rename: a
    reader sees the old file or the new one, never a torn one."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def recorded_value(old: dict[str, Any], key: str) -> Any:
    """``key`` in a recorded fingerprint; a run recorded before the setting existed reads as the
    value that reproduces it (``Config.value_before``: its ``before`` value, else its default)."""
    from ghns.config import Config

    if key in old:
        return old[key]
    try:
        return Config.value_before(key)
    except KeyError:
        return None


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Settings that differ between a recorded fingerprint and the current one. A run recorded
    before a setting existed stays valid while that setting is at ``recorded_value``, and a
    setting that no longer feeds the stage (moved to a later one) is ignored."""
    return sorted(k for k in new if recorded_value(old, k) != new[k])


def fingerprint(cfg, stage: str) -> dict[str, Any]:
    """The config values ``stage`` depends on."""
    import dataclasses

    sections = STAGE_SECTIONS[stage]
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.metadata.get("section") in sections}
