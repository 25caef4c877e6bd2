"""Stage 1 through Ray Train: two CPU workers (gloo), and resumption after a worker dies."""

from __future__ import annotations

import json

import pytest

from ghns.config import Config
from ghns.pipeline import run_until
from ghns.rundir import RunDir
from ghns.train_parts.stage import _train_parts

pytestmark = pytest.mark.slow

TINY = dict(synthetic_classes=4, synthetic_per_class=12, synthetic_image_size=48,
            object_method="oracle", part_method="oracle", stage1_epochs=3, batch_classes=2,
            batch_images=2, embedding_dim=16)


def prepared(tmp_path, **extra) -> Config:
    cfg = Config(run_dir=str(tmp_path / "run"), **{**TINY, **extra})
    run_until(cfg, "localize")  # oracle boxes: no training needed
    return cfg


def test_two_workers_train_with_gloo(ray_session, tmp_path):
    cfg = prepared(tmp_path, workers=2)
    from ghns.data.catalog import Catalog

    history = _train_parts(cfg, RunDir(cfg.run_dir), Catalog.read(RunDir(cfg.run_dir).catalog), False)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(h["workers"] == 2 for h in history)  # a real group of two, each on half the split
    assert RunDir(cfg.run_dir).part_networks.is_file()


@pytest.mark.parametrize("trainer", ["ray", "local"])
def test_a_worker_failure_resumes_from_the_last_checkpoint(ray_session, tmp_path, monkeypatch, trainer):
    from ghns.data.catalog import Catalog

    cfg = prepared(tmp_path, max_failures=1, trainer=trainer)
    run = RunDir(cfg.run_dir)
    _fail_once_at_epoch_2(monkeypatch, tmp_path / "failed-once")
    history = _train_parts(cfg, run, Catalog.read(run.catalog), False)
    assert (tmp_path / "failed-once").is_file()  # the worker did die
    starts = _starts(run)
    # restarted from a reported checkpoint (epoch 0 or 1: Ray registers them asynchronously,
    # so the last one may not be registered when the worker dies), never from scratch
    assert starts[0] == 0 and len(starts) == 2 and starts[1] in (1, 2)
    assert [h["epoch"] for h in history] == [0, 1, 2]


def _fail_once_at_epoch_2(monkeypatch, marker) -> None:
    """Every ``fit`` from here on: the main worker fails at the start of epoch 2, once (``marker``
    remembers), with a checkpoint after every epoch."""
    from ghns.train import runner

    original = runner.fit

    def fit_with_fault(loop, spec, cfg, name, **worker):
        return original(loop, spec, cfg, name, **worker, fail_once_at_epoch=2, report_seconds=0,
                        fail_marker=str(marker))

    monkeypatch.setattr(runner, "fit", fit_with_fault)


def _starts(run: RunDir) -> list[int]:
    """The epoch each start of train-parts' training began at."""
    return [json.loads(line)["start_epoch"] for line in
            (run.path / "train-parts" / "history.json.starts").read_text().splitlines()]


def _weights(path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same_weights(a, b) -> bool:
    import torch

    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ray_train_and_a_local_run_train_the_same_weights(ray_session, tmp_path):
    from ghns.data.catalog import Catalog

    runs = {}
    for trainer in ("ray", "local"):
        cfg = prepared(tmp_path / trainer, trainer=trainer)
        run = RunDir(cfg.run_dir)
        history = _train_parts(cfg, run, Catalog.read(run.catalog), False)
        runs[trainer] = (run, history)
    (ray_run, ray_history), (local_run, local_history) = runs["ray"], runs["local"]
    assert not (ray_run.path / "ray" / "train-parts" / "state.pt").exists()  # Ray Train's own storage
    assert (local_run.path / "ray" / "train-parts" / "state.pt").is_file()  # the local checkpoint
    assert _same_weights(ray_run.part_networks, local_run.part_networks)

    def figures(history: list[dict]) -> list[dict]:  # all but the wall times
        return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]

    assert figures(ray_history) == figures(local_history)


@pytest.mark.parametrize("first", ["local", "ray"])
def test_an_interrupted_run_resumes_locally_where_it_stopped(ray_session, tmp_path, monkeypatch, first):
    """Stopped at epoch 2 (no restarts left), in a local run or under Ray Train; the rerun is local
    (what 'auto' picks here) and resumes from the last checkpoint either left."""
    from ghns.data.catalog import Catalog
    from ghns.train import runner

    whole = prepared(tmp_path / "whole", trainer="local")
    _train_parts(whole, RunDir(whole.run_dir), Catalog.read(RunDir(whole.run_dir).catalog), False)

    cfg = prepared(tmp_path / "cut", trainer=first, max_failures=0)
    run = RunDir(cfg.run_dir)
    _fail_once_at_epoch_2(monkeypatch, tmp_path / "failed-once")
    with pytest.raises(runner.WorkerFailure if first == "local" else Exception):
        _train_parts(cfg, run, Catalog.read(run.catalog), False)
    assert (tmp_path / "failed-once").is_file() and not run.part_networks.is_file()
    cfg = cfg.replace(trainer="local")
    history = _train_parts(cfg, run, Catalog.read(run.catalog), False)  # the rerun
    starts = _starts(run)
    # a local checkpoint is written before the next epoch starts; Ray Train registers its own
    # asynchronously, so the last one may not be registered when the worker dies
    assert starts[0] == 0 and len(starts) == 2 and starts[1] in ((2,) if first == "local" else (1, 2))
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert _same_weights(run.part_networks, RunDir(whole.run_dir).part_networks)
