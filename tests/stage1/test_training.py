"""Stage 1 through Ray Train: two CPU workers (gloo), and resumption after a worker dies."""

from __future__ import annotations

import json

import pytest

from ghns.config import Config
from ghns.pipeline import run_until
from ghns.rundir import RunDir
from ghns.stage1.stage import _train_parts

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


def test_a_worker_failure_resumes_from_the_last_checkpoint(ray_session, tmp_path, monkeypatch):
    from ghns.data.catalog import Catalog
    from ghns.train import runner

    cfg = prepared(tmp_path, max_failures=1)
    run = RunDir(cfg.run_dir)
    original = runner.fit

    def fit_with_fault(loop, spec, cfg, name, **worker):
        return original(loop, spec, cfg, name, **worker, fail_once_at_epoch=2, report_seconds=0,
                        fail_marker=str(tmp_path / "failed-once"))

    monkeypatch.setattr(runner, "fit", fit_with_fault)
    history = _train_parts(cfg, run, Catalog.read(run.catalog), False)
    assert (tmp_path / "failed-once").is_file()  # the worker did die
    starts = [json.loads(line)["start_epoch"] for line in
              (run.path / "train-parts" / "history.json.starts").read_text().splitlines()]
    # restarted from a reported checkpoint (epoch 0 or 1: Ray registers them asynchronously,
    # so the last one may not be registered when the worker dies), never from scratch
    assert starts[0] == 0 and len(starts) == 2 and starts[1] in (1, 2)
    assert [h["epoch"] for h in history] == [0, 1, 2]
