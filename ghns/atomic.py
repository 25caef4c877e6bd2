"""Run files written whole and read back in one line: the ground floor (it imports only
``ghns.errors``), so that any module, the config included, can use it.

* Writes are atomic (``atomic_path``, ``atomic_write_text``, ``save_torch``): a reader sees the
  old file or the new one, never a torn one; a write that fails (disk full, a file size limit)
  is an ``OSError`` naming the file, which the CLI prints in one line (torch reports its own
  failed writes as ``RuntimeError``: ``save_torch`` turns them into ``OSError``).
* Reads of files the package wrote (``read_json``, ``read_table``, ``load_torch``) turn a
  truncated, empty or foreign file into one ``RunFileError`` line naming it and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from ghns.errors import RunFileError

REDO = "delete it, or run its stage again with --force"


TEMPORARY = re.compile(r"\.\d+-[0-9a-f]{8}\.[A-Za-z0-9]+$")  # what temporary_name (and a suffix) makes


def temporary_name(path: Path) -> Path:
    """A name beside ``path`` that no other process or thread uses (write there, then rename)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def remove_temporaries(folder: Path, skip: tuple[str, ...] = ("ray",)) -> list[Path]:
    """Remove what interrupted writers left in ``folder``: files and folders named by
    ``temporary_name``. Only safe while no writer runs (the run directory's lock is held and
    nothing started yet). ``skip``: top-level folders not to enter (Ray's own storage)."""
    removed = []
    for top, dirs, files in os.walk(folder):
        if Path(top) == folder:
            dirs[:] = [d for d in dirs if d not in skip]
        for name in [d for d in dirs if TEMPORARY.search(d)]:
            shutil.rmtree(Path(top) / name, ignore_errors=True)
            dirs.remove(name)
            removed.append(Path(top) / name)
        for name in files:
            if TEMPORARY.search(name):
                (Path(top) / name).unlink(missing_ok=True)
                removed.append(Path(top) / name)
    return removed


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


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``; a failed write (torch's ``RuntimeError`` from its zip writer)
    becomes an ``OSError`` naming ``path``."""
    import torch

    try:
        torch.save(obj, path)
    except RuntimeError as exc:
        text = str(exc)
        if "PytorchStreamWriter" not in text and "inline_container" not in text:
            raise
        raise OSError(errno.EIO, "could not be written (disk full, or a file size limit)", str(path)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def read_json(path: str | Path) -> Any:
    """A JSON file the package wrote; an unreadable one is one ``RunFileError`` line."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise RunFileError(f"{path}: not a readable JSON file ({_first_line(exc)}): {REDO}") from None


def read_table(path: str | Path, columns: list[str] | None = None):
    """A parquet file the package wrote, as a pyarrow table; an unreadable one is one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except pa.ArrowException as exc:  # a missing file stays FileNotFoundError
        raise RunFileError(f"{path}: not a readable parquet file ({_first_line(exc)}): {REDO}") from None


def load_torch(path: str | Path, map_location: str = "cpu") -> Any:
    """A torch file the package wrote (tensors and plain values only: ``weights_only``); an
    empty, truncated or foreign one is one line (a pickle that is not plain is refused by
    ``ghns.checkpoint.load_checkpoint`` with its own line)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise
    except (EOFError, RuntimeError, ValueError) as exc:  # empty, truncated, not a torch zip
        raise RunFileError(f"{path}: not a readable torch file ({_first_line(exc)}): {REDO}") from None


def check_format(path: Path, what: str, found: Any, reads: int) -> None:
    """Refuse in one line a run file that a newer ghns wrote (its ``what`` format above ``reads``)."""
    if not isinstance(found, int) or found > reads:
        raise RunFileError(f"{path} was written by a newer ghns ({what} format {found}; this one reads up to "
                           f"{reads}): upgrade ghns, or use another --run-dir")
