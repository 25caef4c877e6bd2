"""The side of a learned part box: the chosen scale times the object box's longer side, the scale
following the backbone's weights unless one is given."""

from __future__ import annotations

import pandas as pd
import pytest

from ghns.config import Config
from ghns.localize.infer import columns
from ghns.localize.stage import _choose_boxes


def _out() -> pd.DataFrame:
    # one 400 x 300 image (H x W), foreground box 100 wide and 200 tall, part centres well inside
    row = dict(zip(columns("fg"), (50.0, 60.0, 100.0, 200.0)))
    row.update(image_h=400, image_w=300)
    for k, (cx, cy) in enumerate([(100.0, 100.0), (100.0, 160.0), (120.0, 220.0)]):
        row.update({f"part{k + 1}_cx": cx, f"part{k + 1}_cy": cy})
    return pd.DataFrame([row])


@pytest.mark.parametrize("settings, side", [
    ({"dataset": "cub", "root": "/r"}, 100.0),                      # pretrained Lite0: 0.5
    ({"dataset": "cub", "root": "/r", "pretrained": "none"}, 80.0),  # from scratch: 0.4
    ({}, 80.0),                                                      # the synthetic default (tiny_cnn)
    ({"dataset": "cub", "root": "/r", "part_box_scale": 0.3}, 60.0),  # a scale given wins
])
def test_part_boxes_are_the_resolved_scale_of_the_object_boxs_longer_side(settings, side):
    cfg = Config(**settings)
    out = _out()
    _choose_boxes(cfg, out, None, None)
    assert cfg.resolved_part_box_scale() == side / 200.0
    for k in range(3):
        x, y, w, h = out[columns(f"part{k + 1}")].iloc[0]
        assert (w, h) == (side, side)
        assert (x + w / 2, y + h / 2) == (out[f"part{k + 1}_cx"].iloc[0], out[f"part{k + 1}_cy"].iloc[0])


def test_a_negative_or_too_large_part_box_scale_is_refused():
    from ghns.config import ConfigError

    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="part_box_scale"):
            Config(part_box_scale=bad)
