"""Maps to boxes: pure functions on numpy arrays, exact on hand-made maps (see tests).

Boxes are ``(x, y, w, h)`` in pixels of the image the map covers, top-left origin; a map of
shape (h, w) covers an image of ``size = (H, W)`` with each map cell spanning ``H/h x W/w`` pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[float, float, float, float]


def box_from_map(heat: np.ndarray, threshold: float, size: tuple[int, int] | None = None,
                 mode: str = "largest") -> tuple[Box, bool]:
    """Threshold a heat map at ``threshold * max`` and box the kept region.

    ``mode='largest'``: the largest 8-connected region (CAM, Zhou et al. 2016);
    ``mode='union'``: every kept cell (a map whose object shows as several blobs, e.g. parts).
    Returns ``(box, degenerate)``: a map that is empty, flat or has no positive value gives the
    whole image and ``degenerate=True`` (so it can be counted); otherwise ``False``.
    """
    h, w = heat.shape
    H, W = size if size is not None else (h, w)
    whole = (0.0, 0.0, float(W), float(H))
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0)
    top = heat.max() if heat.size else 0.0
    if top <= 0 or np.ptp(heat) <= 1e-12 * max(1.0, abs(top)):
        return whole, True
    keep = heat >= threshold * top
    if mode == "largest":
        labels, n = ndimage.label(keep, structure=np.ones((3, 3)))
        sizes = ndimage.sum(keep, labels, range(1, n + 1))
        keep = labels == (int(np.argmax(sizes)) + 1)
    elif mode != "union":
        raise ValueError(f"unknown mode {mode!r}")
    ys, xs = np.nonzero(keep)
    sy, sx = H / h, W / w
    return (xs.min() * sx, ys.min() * sy, (xs.max() + 1 - xs.min()) * sx,
            (ys.max() + 1 - ys.min()) * sy), False


def mass_centre(weights: np.ndarray, size: tuple[int, int] | None = None) -> tuple[float, float]:
    """Centre of mass (x, y) of a non-negative map, in pixels; the map centre when it is empty."""
    h, w = weights.shape
    H, W = size if size is not None else (h, w)
    weights = np.clip(np.nan_to_num(weights, nan=0.0), 0, None)
    total = weights.sum()
    if total <= 0:
        return W / 2.0, H / 2.0
    ys, xs = np.mgrid[0:h, 0:w]
    return (float((weights * (xs + 0.5)).sum() / total * W / w),
            float((weights * (ys + 0.5)).sum() / total * H / h))


def box_around(centre: tuple[float, float], side: float, size: tuple[float, float]) -> Box:
    """A ``side`` x ``side`` box centred on ``centre``, shifted (not shrunk) to stay inside an
    image of ``size = (H, W)``, shrunk only when the image is smaller than the box."""
    H, W = size
    sw, sh = min(side, W), min(side, H)
    x = min(max(centre[0] - sw / 2, 0.0), W - sw)
    y = min(max(centre[1] - sh / 2, 0.0), H - sh)
    return float(x), float(y), float(sw), float(sh)


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def contains(box: Box, point: tuple[float, float]) -> bool:
    x, y, w, h = box
    return x <= point[0] <= x + w and y <= point[1] <= y + h


def scale_box(box: Box, sx: float, sy: float) -> Box:
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
