from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ghns.localize.oracle import CUB_PART_GROUPS, cub_part_boxes, object_boxes, part_boxes


def keypoints(visible: dict[int, tuple[float, float]]) -> list[float]:
    pts = [0.0] * 45
    for pid, (x, y) in visible.items():
        pts[3 * (pid - 1): 3 * pid] = [x, y, 1.0]
    return pts


def test_cub_groups_cover_the_named_keypoints():
    assert sorted(sum(CUB_PART_GROUPS.values(), ())) == sorted(set(range(1, 16)) - {8, 12})  # legs out


def test_cub_keypoints_to_head_body_tail_boxes():
    pts = keypoints({2: (100, 50), 5: (110, 40), 15: (104, 70),      # beak, crown, throat
                     1: (60, 60), 3: (70, 90), 9: (50, 75),           # back, belly, left wing
                     14: (10, 80)})                                   # tail
    head, body, tail = cub_part_boxes(pts, min_side=20)
    assert head == (95.0, 40.0, 20.0, 30.0)    # x 100..110 grown to 20 wide around centre 105
    assert body == (50.0, 60.0, 20.0, 30.0)
    assert tail == (0.0, 70.0, 20.0, 20.0)     # a single point: a min_side square around it


def test_invisible_group_has_no_box():
    head, body, tail = cub_part_boxes(keypoints({2: (10, 10)}), min_side=5)
    assert not math.isnan(head[0]) and all(math.isnan(v) for v in body + tail)


def test_catalog_columns_to_boxes():
    df = pd.DataFrame({"box_x": [1.0, 2.0], "box_y": [0.0, 0.0], "box_w": [10.0, 10.0], "box_h": [5.0, 5.0],
                       "part_boxes": [list(np.arange(12.0)), list(np.arange(12.0) + 1)]})
    assert object_boxes(df) == [(1.0, 0.0, 10.0, 5.0), (2.0, 0.0, 10.0, 5.0)]
    assert part_boxes(df)[1][2] == (9.0, 10.0, 11.0, 12.0)
    assert object_boxes(df.drop(columns=["box_x"])) is None
    assert part_boxes(df.drop(columns=["part_boxes"])) is None
