"""Ground truth as boxes, for the oracle options (upper-bound studies) and for measuring.

* Object: the dataset's own box (CUB ``bounding_boxes.txt``, Cars, Aircraft, DeepFashion,
  synthetic).
* Parts, CUB: the 15 keypoints of ``parts/part_locs.txt`` grouped into head (beak, crown,
  forehead, left/right eye, nape, throat), body (back, breast, belly, left/right wing) and tail;
  legs are not used. A part box is the box around the group's visible keypoints, grown to at
  least ``min_side`` pixels; a group with no visible keypoint has no box (NaN).
* Parts, synthetic: the rendered head, body and tail boxes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ghns.localize.boxes import Box

PART_NAMES = ("head", "body", "tail")
# CUB part ids (1-based, parts/parts.txt order) per part group
CUB_PART_GROUPS = {
    "head": (2, 5, 6, 7, 10, 11, 15),  # beak, crown, forehead, left eye, nape, right eye, throat
    "body": (1, 3, 4, 9, 13),          # back, belly, breast, left wing, right wing
    "tail": (14,),                     # tail
}
NAN_BOX: Box = (math.nan, math.nan, math.nan, math.nan)


def _box4(values) -> Box:
    x, y, w, h = (float(v) for v in values)
    return x, y, w, h


def object_boxes(table: pd.DataFrame) -> list[Box] | None:
    """The catalog's object boxes, or None when the dataset has none."""
    cols = ["box_x", "box_y", "box_w", "box_h"]
    if not set(cols) <= set(table.columns) or table[cols].isna().all().all():
        return None
    return [_box4(r) for r in table[cols].to_numpy()]


def cub_part_boxes(points: list[float], min_side: float) -> list[Box]:
    """Three boxes (head, body, tail) from one image's flat ``[x, y, visible] * 15`` keypoints."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = []
    for name in PART_NAMES:
        ids = [i - 1 for i in CUB_PART_GROUPS[name] if i - 1 < len(pts)]
        visible = pts[ids][pts[ids][:, 2] > 0][:, :2]
        if len(visible) == 0:
            out.append(NAN_BOX)
            continue
        lo, hi = visible.min(axis=0), visible.max(axis=0)
        centre = (lo + hi) / 2
        w, h = max(hi[0] - lo[0], min_side), max(hi[1] - lo[1], min_side)
        out.append((float(centre[0] - w / 2), float(centre[1] - h / 2), float(w), float(h)))
    return out


def part_boxes(table: pd.DataFrame, min_side_fraction: float = 0.25) -> list[list[Box]] | None:
    """Per image, the three true part boxes (synthetic or CUB keypoints), or None.

    For CUB, ``min_side`` is ``min_side_fraction`` of the object box's longer side (or of the
    image's keypoint spread when there is no object box).
    """
    if "part_boxes" in table.columns and table["part_boxes"].notna().any():
        return [[_box4(np.asarray(b)[4 * k: 4 * k + 4]) for k in range(3)]
                if b is not None and len(b) == 12 else [NAN_BOX] * 3 for b in table["part_boxes"]]
    if "part_points" in table.columns and table["part_points"].notna().any():
        objects = object_boxes(table)
        out = []
        for i, pts in enumerate(table["part_points"]):
            if pts is None or len(pts) == 0:
                out.append([NAN_BOX] * 3)
                continue
            side = max(objects[i][2], objects[i][3]) if objects else 100.0
            out.append(cub_part_boxes(pts, min_side_fraction * side))
        return out
    return None
