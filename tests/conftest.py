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


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for the whole test session (never one per test)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    import ray

    import ghns.raykit  # noqa: F401 - sets the RAY_USAGE_STATS_ENABLED default

    start_test_ray()
    yield ray
    ray.shutdown()


def start_test_ray(**extra) -> None:
    """The test session's small local Ray (``extra`` e.g. ``num_gpus=2`` for logical GPUs)."""
    import ray

    import ghns.raykit  # noqa: F401 - sets the RAY_USAGE_STATS_ENABLED default

    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False,
                 log_to_driver=False, configure_logging=False, **extra)


TINY_SYNTHETIC = ["--synthetic-classes", "4", "--synthetic-per-class", "12",
                  "--synthetic-image-size", "48", "--localize-epochs", "2", "--batch-size", "16",
                  "--stage1-epochs", "2", "--batch-classes", "2", "--batch-images", "2",
                  "--embedding-dim", "16", "--per-class", "5", "--neighbors", "3", "--tau", "0.2",
                  "--stage3-epochs", "2", "--parts-epochs", "3", "--seed-ensemble", "2",
                  "--synthetic-near-misses", "16"]


def pretrained_tiny_weights(path: Path) -> Path:
    """A tiny_cnn state-dict file at ``path`` (seed 0): ``--pretrained path`` makes the backbone
    count as pretrained, so its frozen blocks' outputs are stored once per run."""
    import torch

    from ghns.models.backbones import create_backbone

    torch.manual_seed(0)
    torch.save(create_backbone("tiny_cnn", "none").state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, ray_session) -> Path:
    """A finished tiny synthetic pipeline run, built once per test session. Tests that change
    it must leave it as they found it, or work on a copy."""
    from ghns.cli import main

    run = tmp_path_factory.mktemp("pipe") / "run"
    try:
        main(["pipeline", "--run-dir", str(run), *TINY_SYNTHETIC])
    except SystemExit as exc:
        assert exc.code in (0, None)
    return run


def stop_train_final_after_original(run: Path) -> tuple[Path, int]:
    """Make ``run`` look as if train-final stopped after its original classifier (object.pt
    gone, train-final and evaluate unrecorded); returns the kept original.pt and its mtime."""
    import json

    kept = run / "train-final" / "original.pt"
    mtime = kept.stat().st_mtime_ns
    (run / "train-final" / "object.pt").unlink()
    stages = json.loads((run / "stages.json").read_text())
    for name in ("train-final", "evaluate"):
        stages.pop(name)
    (run / "stages.json").write_text(json.dumps(stages))
    return kept, mtime
