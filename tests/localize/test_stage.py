"""The localize stage end to end on a tiny synthetic run (Ray Train + Ray Data)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import TINY_SYNTHETIC

pytestmark = pytest.mark.slow


def test_localize_writes_boxes_figures_and_skips_when_done(cli, ray_session, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("localize", "--run-dir", run, *TINY_SYNTHETIC)
    assert code == 0, err
    loc = pd.read_parquet(run / "localization.parquet")
    assert len(loc) == 48 and loc["image_id"].is_unique
    for prefix in ("obj", "cam", "fg", "part1", "part2", "part3"):
        x, y, w, h = (loc[f"{prefix}_{c}"].to_numpy() for c in "xywh")
        assert (x >= -1e-6).all() and (y >= -1e-6).all() and (w > 0).all() and (h > 0).all()
        assert (x + w <= 48 + 1e-6).all() and (y + h <= 48 + 1e-6).all()
    figures = json.loads((run / "localization.json").read_text())
    assert set(figures["object_iou50"]) == {"train", "val", "test"}
    assert set(figures["part_center_hit"]["test"]) == {"head", "body", "tail"}
    assert sorted(figures["part_assignment"].values()) == ["part1", "part2", "part3"]
    assert "object_iou50" in out and "part_center_hit" in out
    history = json.loads((run / "localize" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    for term in ("cam_loss", "part_loss", "compactness", "presence", "separation", "area"):
        assert all(np.isfinite(h[term]) and h[term] >= 0 for h in history), term

    code, out, err = cli("show", "parts", "--run-dir", run, "--rows", "3")
    assert code == 0, err
    assert Image.open(run / "figures" / "parts.png").size[1] > 3 * 160

    code, out, err = cli("localize", "--run-dir", run)  # settings come from the run's config
    assert code == 0 and "localize: done already" in err


def test_oracle_boxes_need_no_training_and_score_perfectly(cli, ray_session, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli("localize", "--run-dir", run, *TINY_SYNTHETIC, "--object-method", "oracle",
                         "--part-method", "oracle")
    assert code == 0, err
    figures = json.loads((run / "localization.json").read_text())
    assert all(v == 1.0 for v in figures["object_iou50"].values())
    assert all(v == 1.0 for hits in figures["part_center_hit"].values() for v in hits.values())
    assert not (run / "localize" / "model.pt").exists()
    loc = pd.read_parquet(run / "localization.parquet")
    catalog = pd.read_parquet(run / "catalog.parquet")
    merged = loc.merge(catalog, on="image_id")
    np.testing.assert_allclose(merged["obj_w"], merged["box_w"])


def test_oracle_needs_annotations(cli, tmp_path):
    from tests.data.test_imagefolder import make_tree

    make_tree(tmp_path / "data")
    code, out, err = cli("localize", "--run-dir", tmp_path / "run", "--dataset", "imagefolder",
                         "--root", tmp_path / "data", "--part-method", "oracle")
    assert code == 2 and "part_method 'oracle' needs part annotations" in err
