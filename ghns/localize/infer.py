"""Batch inference of the localizer: the Ray Data actor and the per-image box logic.

``localize_batch`` is plain torch/numpy (tested directly); ``LocalizeActor`` is the stateful
class Ray Data's ``map_batches`` builds once per actor (it loads the model there).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ghns.checkpoint import load_model
from ghns.data.tensors import load_resized, to_float
from ghns.models.backbones import cpu_layout
from ghns.localize.boxes import box_from_map, mass_centre, scale_box

BOX_COLS = ("x", "y", "w", "h")


def columns(prefix: str) -> list[str]:
    return [f"{prefix}_{c}" for c in BOX_COLS]


@torch.no_grad()
def localize_batch(model, images: torch.Tensor, labels: np.ndarray, is_train: np.ndarray,
                   sizes: list[tuple[int, int]], cam_threshold: float,
                   foreground_threshold: float, side: int | None = None) -> dict[str, np.ndarray]:
    """Boxes and part centres for a batch, in each image's original pixels. ``images``: uint8
    images, or with ``side`` (the input size they were taken at) the localizer's trunk outputs.

    CAM of the true class on train images and of the predicted class elsewhere; the foreground
    map is one minus the background assignment; part centres are the centres of mass of the
    part assignment maps.
    """
    model.eval()
    out = model(images, cached=True) if side is not None else model(to_float(images))
    probs = out["cam_logits"].softmax(1)
    pred = probs.argmax(1)
    classes = torch.where(torch.tensor(np.asarray(is_train, dtype=bool), device=pred.device),
                          torch.tensor(np.asarray(labels, dtype=np.int64), device=pred.device), pred)
    side = side if side is not None else images.shape[-1]
    cams = F.interpolate(model.cam(out["features"], classes)[:, None], size=(side, side),
                         mode="bilinear", align_corners=False)[:, 0].cpu().numpy()
    assign = F.interpolate(out["assign"], size=(side, side), mode="bilinear",
                           align_corners=False).cpu().numpy()
    n, k1 = assign.shape[:2]
    res: dict[str, Any] = {name: np.zeros(n) for prefix in ("cam", "fg") for name in columns(prefix)}
    res.update({"cam_degenerate": np.zeros(n, bool), "fg_degenerate": np.zeros(n, bool),
                "pred_label": pred.cpu().numpy(), "pred_score": probs.max(1).values.cpu().numpy()})
    for k in range(k1 - 1):
        res[f"part{k + 1}_cx"], res[f"part{k + 1}_cy"] = np.zeros(n), np.zeros(n)
        res[f"part{k + 1}_peak"] = assign[:, k].reshape(n, -1).max(1)
    for i in range(n):
        width, height = sizes[i]
        sx, sy = width / side, height / side
        for prefix, heat, thr, mode in (("cam", cams[i], cam_threshold, "largest"),
                                        ("fg", 1.0 - assign[i, -1], foreground_threshold, "union")):
            box, degenerate = box_from_map(heat, thr, mode=mode)
            for name, value in zip(columns(prefix), scale_box(box, sx, sy)):
                res[name][i] = value
            res[f"{prefix}_degenerate"][i] = degenerate
        for k in range(k1 - 1):
            cx, cy = mass_centre(assign[i, k])
            res[f"part{k + 1}_cx"][i], res[f"part{k + 1}_cy"][i] = cx * sx, cy * sy
    return res


class LocalizeActor:
    """Ray Data ``map_batches`` class: model loaded once, batches of catalog rows in, boxes out."""

    def __init__(self, model_path: str, cam_threshold: float, foreground_threshold: float,
                 device: str = "cpu", threads: int = 1) -> None:
        if device == "cpu":
            torch.set_num_threads(threads)
        self.model, self.settings = load_model(model_path, "localizer")
        self.device = torch.device(device if device == "cpu" or torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        cpu_layout(self.model, self.device)
        self.cam_threshold, self.foreground_threshold = cam_threshold, foreground_threshold

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        loaded = load_resized(batch["path"].tolist(), self.settings["image_size"])
        res = localize_batch(self.model, loaded.images.to(self.device), batch["label"].to_numpy(),
                             (batch["split"] == "train").to_numpy(), loaded.sizes,
                             self.cam_threshold, self.foreground_threshold)
        out = batch.copy()
        for name, values in res.items():
            out[name] = values
        out["image_failed"] = np.isin(np.arange(len(batch)), loaded.failed)
        out["image_w"] = [w for w, _ in loaded.sizes]
        out["image_h"] = [h for _, h in loaded.sizes]
        return out


@torch.no_grad()
def boxes_from_trunks(model_path: str, folder: str, catalog, trunk_blocks: int, cam_threshold: float,
                      foreground_threshold: float, batch: int = 64) -> pd.DataFrame:
    """What ``LocalizeActor`` gives for every catalogued image, from the run's frozen-trunk
    outputs (``ghns.trunks``) instead of the images: the localizer's further frozen blocks and its
    heads run here, in this process (no image is decoded again)."""
    from ghns.localize.train import frozen_rest
    from ghns.trunks import SPLITS, read_trunks

    model, settings = load_model(model_path, "localizer")
    device = torch.device("cpu")
    frames = []
    for split in SPLITS:
        rows = catalog.split(split)[["image_id", "label", "split"]].reset_index(drop=True)
        if rows.empty:
            continue
        data = read_trunks(folder, split, rows["image_id"].to_numpy())
        sizes = [(int(w), int(h)) for w, h in data["size"].tolist()]
        parts = []
        for i in range(0, len(rows), batch):
            feats = frozen_rest(model, data["x"][i:i + batch], trunk_blocks, device).float()
            feats = feats.contiguous(memory_format=cpu_layout(model, device))
            parts.append(localize_batch(model, feats, rows["label"].to_numpy()[i:i + batch],
                                        np.full(len(feats), split == "train"), sizes[i:i + batch],
                                        cam_threshold, foreground_threshold, side=settings["image_size"]))
        out = rows.copy()
        for name in parts[0]:
            out[name] = np.concatenate([p[name] for p in parts])
        out["image_failed"] = False
        out["image_w"] = [w for w, _ in sizes]
        out["image_h"] = [h for _, h in sizes]
        frames.append(out)
    return pd.concat(frames, ignore_index=True)
