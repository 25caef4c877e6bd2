"""Embedding every (image, part) with the trained part networks: a Ray Data actor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ghns.checkpoint import load_model
from ghns.data.tensors import load_part_crops, to_float
from ghns.models import N_PARTS
from ghns.models.backbones import cpu_layout

BOX_COLUMNS = [f"part{k + 1}_{c}" for k in range(N_PARTS) for c in "xywh"]


class EmbedActor:
    """Ray Data ``map_batches`` class: part networks loaded once; rows with part boxes in,
    one unit-length embedding per part out (columns ``part1..3``, float32 arrays)."""

    def __init__(self, model_path: str, device: str = "cpu", threads: int = 1) -> None:
        if device == "cpu":
            torch.set_num_threads(threads)
        self.model, self.settings = load_model(model_path, "part_networks")
        self.device = torch.device(device if device == "cpu" or torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        cpu_layout(self.model, self.device)

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        boxes = batch[BOX_COLUMNS].to_numpy(dtype=float).reshape(len(batch), N_PARTS, 4)
        crops, failed = load_part_crops(batch["path"].tolist(), boxes, self.settings["image_size"])
        emb, _, _ = self.model(to_float(crops).to(self.device))
        emb = emb.float().cpu().numpy()
        out = batch[["_order", "image_id", "split", "label"]].copy()
        for k in range(N_PARTS):
            out[f"part{k + 1}"] = list(emb[:, k])
        out["image_failed"] = np.isin(np.arange(len(batch)), failed)
        return out
