"""The part crops' frozen-trunk outputs, once per run: stage 1 trains on them and embeds from them.

With a pretrained backbone the part networks' first blocks are frozen and most of their compute.
Stage 1 ran them twice: in the training worker for train and val (kept in its memory), and again,
whole networks on decoded crops, in the pass that embeds every image's parts. Now one fill puts
each image's three part crops through them and keeps the outputs in
``<run>/trunks/parts-<key>/{split}.pt`` (``image_id``; ``x``, (N, P, C, h, w)); training reads its
shard of train and val, and the embedding pass runs only the blocks after the frozen ones and the
heads, in this process (``embed_from_trunks``). One orientation, as the training cache had: the
training flips the outputs (``augment``). Float32, unlike the image trunks' float16: the training
reads them as float16 (what its cache always held), but the embeddings are computed from them
exactly as the whole networks compute them on the crops; from float16 inputs the embeddings moved
enough to move six of `cub50-dev`'s 1,452 test images of the parts classifier (and two fused).

The key (``part_trunk_folder``) is a digest of each part network's frozen weights, their count, the
crop size, and every catalogued image's id, path and part boxes: new boxes or weights never read
old outputs. Fills reuse ``ghns.trunks``' machinery (small fills in this process, larger ones as a
Ray Data actor pool writing pieces; a failed decode stops the fill with one line).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ghns.models import N_PARTS
from ghns.models.classifiers import weights_digest
from ghns.atomic import atomic_path, save_torch
from ghns.rundir import RunDir
from ghns.trunks import SPLITS, assemble, finish_fill, pending_fill, read_trunks, run_fill, save_splits

if TYPE_CHECKING:
    from ghns.config import Config
    from ghns.data.catalog import Catalog
    from ghns.models.parts import PartNetworks

log = logging.getLogger(__name__)
FORMAT = 2  # 2: float32 outputs
BOX_COLUMNS = [f"part{k + 1}_{c}" for k in range(N_PARTS) for c in "xywh"]


def part_trunk_digest(model: PartNetworks) -> str:
    """The frozen blocks' weights of every part network, in part order."""
    return hashlib.sha1("|".join(
        weights_digest(net.backbone.blocks[: net.frozen_blocks]) for net in model.networks()).encode()).hexdigest()


def stores_part_trunks(model: PartNetworks, backbone: str, pretrained: str) -> bool:
    """Whether stage 1 runs ``model``'s frozen blocks once per run: they exist and are the same
    weights in every process (pretrained; randomly initialised ones would differ by seed)."""
    from ghns.models.backbones import BACKBONES

    weights = BACKBONES[backbone].default_pretrained if pretrained == "auto" else pretrained
    return model.networks()[0].frozen_blocks > 0 and weights != "none"


def part_box_rows(run: RunDir, catalog: Catalog) -> pd.DataFrame:
    """Every catalogued image (catalog order) with its part boxes from the run's localization."""
    loc = pd.read_parquet(run.localization)[["image_id", *BOX_COLUMNS]]
    return catalog.table[["image_id", "path", "split", "label"]].reset_index(drop=True).merge(
        loc, on="image_id", how="left", validate="one_to_one")


def part_trunk_folder(run: RunDir, model: PartNetworks, image_size: int, rows: pd.DataFrame) -> Path:
    key = hashlib.sha1(json.dumps({"format": FORMAT, "digest": part_trunk_digest(model),
                                   "frozen_blocks": model.networks()[0].frozen_blocks,
                                   "image_size": int(image_size)}, sort_keys=True).encode())
    key.update(rows["image_id"].to_numpy(dtype=np.int64).tobytes())
    key.update("\n".join(map(str, rows["path"])).encode())
    key.update(np.ascontiguousarray(rows[BOX_COLUMNS].to_numpy(dtype=np.float64)).tobytes())
    return run.trunks / f"parts-{key.hexdigest()[:16]}"


def ensure_part_trunks(cfg: Config, run: RunDir, catalog: Catalog, model: PartNetworks,
                       settings: dict[str, Any], splits: tuple[str, ...] = SPLITS) -> Path:
    """The folder of the part crops' frozen-block outputs for ``splits``, filled where missing.
    ``settings``: what ``model``'s checkpoint records (the actors rebuild it from them)."""
    from ghns.checkpoint import save_checkpoint

    size = int(settings["image_size"])
    rows = part_box_rows(run, catalog)
    folder = part_trunk_folder(run, model, size, rows)
    missing, todo, pieces = pending_fill(folder, rows, splits)
    if not missing:
        return folder
    save_checkpoint(folder / "model.pt", model, settings)
    log.info("trunks: %d images' %d part crops through %d frozen blocks at %d px (once per run: %s)",
             len(todo), N_PARTS, model.networks()[0].frozen_blocks, size, ", ".join(missing))
    actor = {"model_path": str((folder / "model.pt").resolve()), "folder": str(pieces.resolve()),
             "image_size": size}
    out = run_fill(cfg, todo.drop(columns=["label"]), PartTrunkActor, actor, N_PARTS * size * size)
    save_splits(folder, todo, missing, assemble(out, pieces, ("x",)))
    finish_fill(run, folder, {"format": FORMAT, "digest": part_trunk_digest(model),
                              "frozen_blocks": model.networks()[0].frozen_blocks, "image_size": size,
                              "crop": "parts", "backbone": settings.get("backbone")})
    return folder


def read_part_trunks(folder: str | Path, split: str, image_ids: np.ndarray, model: PartNetworks) -> torch.Tensor:
    """``split``'s (N, P, C, h, w) outputs, checked against the reader's images and frozen weights."""
    return read_trunks(folder, split, image_ids, part_trunk_digest(model))["x"]


@torch.no_grad()
def embed_from_trunks(model: PartNetworks, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """(N, P, D) unit-length part embeddings of stored trunk outputs (the blocks after the frozen
    ones and the embedding heads only)."""
    from ghns.models.backbones import cpu_layout

    model.eval()
    layout = cpu_layout(model, torch.device("cpu"))
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch].float()
        parts = [chunk[:, k].contiguous(memory_format=layout) for k in range(chunk.shape[1])]
        out.append(torch.stack([net(parts[k], cached=True)[0] for k, net in enumerate(model.networks())], 1))
    return (torch.cat(out) if out else torch.zeros(0, N_PARTS, model.networks()[0].embed.out_features)).numpy()


class PartTrunkActor:
    """Fill actor: catalog rows with part boxes in; each image decoded once, its part crops through
    their part network's frozen blocks, the float32 outputs written as one piece per batch."""

    def __init__(self, model_path: str, folder: str, image_size: int, device: str = "cpu",
                 threads: int = 1) -> None:
        from ghns.checkpoint import load_model
        from ghns.models.backbones import cpu_layout

        if device == "cpu":
            torch.set_num_threads(threads)
        self.device = torch.device(device if device == "cpu" or torch.cuda.is_available() else "cpu")
        self.model, _ = load_model(model_path, "part_networks")
        self.model.to(self.device).eval()
        self.layout = cpu_layout(self.model, self.device)
        self.folder, self.size = Path(folder), image_size

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from ghns.data.tensors import load_part_crops, to_float

        boxes = batch[BOX_COLUMNS].to_numpy(dtype=float).reshape(len(batch), N_PARTS, 4)
        crops, failed = load_part_crops(batch["path"].tolist(), boxes, self.size)
        x = torch.stack([net.trunk(to_float(crops[:, k]).to(self.device).contiguous(memory_format=self.layout))
                         .contiguous().float().cpu() for k, net in enumerate(self.model.networks())], 1)
        name = f"{int(batch['_order'].iloc[0]):09d}.pt"
        with atomic_path(self.folder / name) as tmp:
            save_torch({"x": x}, tmp)
        out = batch[["_order", "image_id"]].copy()
        out["_file"], out["_row"] = name, np.arange(len(batch))
        out["_failed"] = ["" if i not in failed else p for i, p in enumerate(batch["path"])]
        return out
