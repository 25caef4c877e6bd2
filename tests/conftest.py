"""Shared fixtures: small image writers, the ../shared/data location, the CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GHNS_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), seed: int = 0,
                fmt: str | None = None) -> Path:
    """A small random image in ``mode`` at ``path`` (format from the suffix unless ``fmt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4, "P": 1, "LA": 2}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr,
                          {"P": "L", "L": "L", "LA": "LA"}.get(mode, mode))
    if mode == "P":
        img = img.convert("P")
    img.save(path, format=fmt)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Synthetic renders go to one temp cache per test session, not the user's home."""
    monkeypatch.setenv("GHNS_CACHE", str(tmp_path_factory.getbasetemp() / "ghns-cache"))


@pytest.fixture
def cli(capsys):
    """Run ``ghns`` in-process: returns (exit code, stdout, stderr)."""
    from ghns.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
