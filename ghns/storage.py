"""Mirror a run directory to and from remote storage (any pyarrow filesystem URI).

Stages read and write a local (or shared-mount) run directory; a Ray job that should leave its
results in object storage (``s3://bucket/runs/cub``, ``gs://...``, or ``file:///...`` in tests)
pulls the mirror before it starts (so an interrupted job resumes) and pushes what changed after
every stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
        target = local / info.path[len(root):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with filesystem.open_input_stream(info.path) as src, open(target, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
        n += 1
    log.info("pulled %d files from %s into %s", n, uri, local)
    return n


class Mirror:
    """Pushes the files of ``local`` that changed (size or mtime) since the last push."""

    def __init__(self, local: str | Path, uri: str) -> None:
        self.local, self.uri = Path(local), uri
        self.filesystem, self.root = _remote(uri)
        self.seen: dict[str, tuple[int, int]] = {}

    def push(self) -> int:
        n = 0
        for path in sorted(p for p in self.local.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(self.local).as_posix()
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
        log.info("pushed %d changed files of %s to %s", n, self.local, self.uri)
        return n
