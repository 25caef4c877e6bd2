"""Atomic file writes: the ground floor (no ghns import), so that any module, the config
included, can write a file that a reader sees whole or not at all."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator


def temporary_name(path: Path) -> Path:
    """A name beside ``path`` that no other process or thread uses (write there, then rename)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A name of this process's own beside ``path`` to write to, renamed onto ``path`` when the
    block ends and removed if it raises: a reader sees the old file or the new one, never a torn
    one. ``suffix`` for writers that append their own (``np.savez`` adds ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp = tmp.with_suffix(suffix) if suffix else tmp
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
