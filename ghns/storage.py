"""Mirror a run directory to and from remote storage (any pyarrow filesystem URI).

Stages read and write a local (or shared-mount) run directory; a Ray job that should leave its
results in object storage (``s3://bucket/runs/cub``, ``gs://...``, or ``file:///...`` in tests)
pulls the mirror before it starts (so an interrupted job resumes) and pushes what changed after
every stage.

A pull writes each file under a temporary name and renames it into place (the job holds the run
directory's lock while it pulls), and refuses a key that would land outside the run directory
(``..``, an absolute path). A push skips temporaries and deletes from the mirror what the run
directory no longer holds, so a stale shard never comes back with the next pull.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ghns.atomic import TEMPORARY, atomic_path
from ghns.errors import GHNSError

log = logging.getLogger(__name__)

CHUNK = 8 << 20


def _remote(uri: str):
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(uri)
    return filesystem, root.rstrip("/")


def pull(uri: str, local: str | Path) -> int:
    """Copy every file under ``uri`` into ``local``; returns the number of files (0 when the
    remote run does not exist yet)."""
    from pyarrow import fs

    filesystem, root = _remote(uri)
    if filesystem.get_file_info(root).type == fs.FileType.NotFound:
        return 0
    local = Path(local)
    n = 0
    for info in filesystem.get_file_info(fs.FileSelector(root, recursive=True)):
        if info.type != fs.FileType.File:
            continue
        target = local_target(local, info.path[len(root):], uri)
        with filesystem.open_input_stream(info.path) as src, atomic_path(target) as tmp, open(tmp, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
        n += 1
    log.info("pulled %d files from %s into %s", n, uri, local)
    return n


def local_target(local: Path, key: str, uri: str) -> Path:
    """Where the mirror's ``key`` (its path below the mirror's root) goes in ``local``; a key
    that would land outside ``local`` is refused in one line."""
    rel = key.lstrip("/")
    target = (local / rel).resolve()
    if not rel or ".." in Path(rel).parts or not target.is_relative_to(local.resolve()):
        raise GHNSError(f"{uri}: refused key {key!r}: it lies outside the run directory {local}")
    return local / rel


class Mirror:
    """Pushes the files of ``local`` that changed (size or mtime) since the last push."""

    def __init__(self, local: str | Path, uri: str) -> None:
        self.local, self.uri = Path(local), uri
        self.filesystem, self.root = _remote(uri)
        self.seen: dict[str, tuple[int, int]] = {}

    def push(self) -> int:
        """Push what changed; delete from the mirror what the run directory no longer holds."""
        n = 0
        here = set()
        for path in sorted(p for p in self.local.rglob("*") if p.is_file() and not p.is_symlink()
                           and not TEMPORARY.search(p.name) and ".lock" != p.name):
            rel = path.relative_to(self.local).as_posix()
            here.add(rel)
            stat = path.stat()
            key = (stat.st_size, stat.st_mtime_ns)
            if self.seen.get(rel) == key:
                continue
            dest = f"{self.root}/{rel}"
            self.filesystem.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            with open(path, "rb") as src, self.filesystem.open_output_stream(dest) as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
            self.seen[rel] = key
            n += 1
        gone = self._delete_stale(here)
        log.info("pushed %d changed files of %s to %s (%d deleted there)", n, self.local, self.uri, gone)
        return n

    def _delete_stale(self, here: set[str]) -> int:
        from pyarrow import fs

        if self.filesystem.get_file_info(self.root).type == fs.FileType.NotFound:
            return 0
        gone = 0
        for info in self.filesystem.get_file_info(fs.FileSelector(self.root, recursive=True)):
            rel = info.path[len(self.root):].lstrip("/")
            if info.type == fs.FileType.File and rel not in here:
                self.filesystem.delete_file(info.path)
                self.seen.pop(rel, None)
                gone += 1
        return gone
