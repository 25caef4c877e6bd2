"""Frozen-trunk outputs, computed once per run and read by every stage that needs them.

A backbone's frozen first blocks give the same output for the same input every time, and on a
pretrained backbone they are most of the compute: on CUB at 224 px the localizer, the original-image
classifier (and its seed-ensemble copies) and evaluate all see the same whole images through the
same frozen blocks. So a run passes each image (and its mirror image) through them once per crop
and keeps the outputs in ``<run>/trunks/``:

* the localizer reads them when its own frozen blocks cover the classifiers' (a pretrained
  backbone: it runs its further frozen blocks on them, for training and for inference);
* the original-image and object classifiers train on them (``ghns.train_final.train``);
* evaluate scores val and test from them: only the blocks after the frozen ones and the heads run.

A folder ``<crop>-<key>`` holds one file per split (``{split}.pt``: ``image_id``, ``x`` and ``xf``,
the float16 outputs of each image and of its mirror image, and ``size``, each image's original
width and height). The key is a digest of the frozen blocks' weights, their count, the input size,
the crop and every catalogued image's id and path (and object box, for object crops), so a changed
image list, box or weight can never read another's outputs; the folder of the same crop that a new
one replaces is removed once the new one is complete. Images that cannot be decoded stop the fill
with one line naming the first: no output is kept for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ghns.errors import StageError
from ghns.atomic import atomic_path, atomic_write_text, read_json, save_torch
from ghns.rundir import RunDir

if TYPE_CHECKING:
    from ghns.config import Config
    from ghns.data.catalog import Catalog
    from ghns.models.classifiers import ImageClassifier

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
FORMAT = 1
# a fill of at most this many pixels (256 images at 224 px: the tiny test runs' 48 at 48 px, not
# the synthetic default's 2,400 at 80 px) runs in this process: Ray Data's actor pool takes
# seconds to start, more than such a pass
IN_PROCESS_PIXELS = 256 * 224 * 224
BOX = [f"obj_{c}" for c in "xywh"]


def image_rows(run: RunDir, catalog: Catalog, crop: str) -> pd.DataFrame:
    """The catalog's rows (``image_id``, ``path``, ``split``, ``label``) in catalog order, with the
    object boxes of the run's localization for ``crop == "object"``."""
    rows = catalog.table[["image_id", "path", "split", "label"]].reset_index(drop=True)
    if crop == "object":
        loc = pd.read_parquet(run.localization)[["image_id", *BOX]]
        rows = rows.merge(loc, on="image_id", how="left", validate="one_to_one")
    return rows


def trunk_folder(run: RunDir, model: ImageClassifier, image_size: int, crop: str,
                 rows: pd.DataFrame) -> Path:
    """Where the outputs of ``model``'s frozen blocks for ``rows`` at ``image_size`` live."""
    key = hashlib.sha1(json.dumps({"format": FORMAT, "digest": model.trunk_digest(),
                                   "frozen_blocks": model.frozen_blocks, "image_size": int(image_size),
                                   "crop": crop}, sort_keys=True).encode())
    key.update(rows["image_id"].to_numpy(dtype=np.int64).tobytes())
    key.update("\n".join(map(str, rows["path"])).encode())
    if crop == "object":
        key.update(np.ascontiguousarray(rows[BOX].to_numpy(dtype=np.float64)).tobytes())
    return run.trunks / f"{crop}-{key.hexdigest()[:16]}"


def ensure_trunks(cfg: Config, run: RunDir, catalog: Catalog, model: ImageClassifier,
                  settings: dict[str, Any], crop: str, splits: tuple[str, ...] = SPLITS) -> Path:
    """The folder of ``model``'s frozen-block outputs for ``splits``, filled where missing: one
    Ray Data pass (``TrunkActor``) over the missing splits' images. ``settings`` are what
    ``model``'s checkpoint records (``ModelSpec``'s fields: the actors rebuild it from them)."""
    from ghns.checkpoint import save_checkpoint
    from ghns.models.classifiers import IMAGE_FORMAT

    size = int(settings["image_size"])
    rows = image_rows(run, catalog, crop)
    folder = trunk_folder(run, model, size, crop, rows)
    missing, todo, pieces = pending_fill(folder, rows, splits)
    if not missing:
        return folder
    save_checkpoint(folder / "model.pt", model, {**settings, "format": IMAGE_FORMAT})
    log.info("trunks: %d %s images through %d frozen blocks at %d px (once per run: %s)",
             len(todo), crop, model.frozen_blocks, size, ", ".join(missing))
    actor: dict[str, Any] = {"model_path": str((folder / "model.pt").resolve()), "folder": str(pieces.resolve()),
                             "image_size": size, "crop": crop}
    out = run_fill(cfg, todo.drop(columns=["label"]), TrunkActor, actor, size * size)
    save_splits(folder, todo, missing, assemble(out, pieces, ("x", "xf")),
                {"size": out[["image_w", "image_h"]].to_numpy(dtype=np.int64)})
    finish_fill(run, folder, {"format": FORMAT, "digest": model.trunk_digest(), "frozen_blocks": model.frozen_blocks,
                              "image_size": size, "crop": crop, "backbone": settings.get("backbone")})
    return folder


def pending_fill(folder: Path, rows: pd.DataFrame,
                 splits: tuple[str, ...]) -> tuple[list[str], pd.DataFrame, Path]:
    """The splits of ``splits`` that ``folder`` lacks, their rows of ``rows`` and the folder the
    fill actors write their pieces to (emptied of an interrupted fill's; made only when a split
    is missing)."""
    missing = [s for s in splits if not (folder / f"{s}.pt").is_file()]
    pieces = folder / "pieces"
    if missing:
        shutil.rmtree(pieces, ignore_errors=True)
        pieces.mkdir(parents=True)
    return missing, rows[rows["split"].isin(missing)].reset_index(drop=True), pieces


def save_splits(folder: Path, todo: pd.DataFrame, missing: list[str], tensors: dict[str, torch.Tensor],
                arrays: dict[str, np.ndarray] | None = None) -> None:
    """``<folder>/<split>.pt`` for each split of ``missing``: its image ids and its rows of
    ``tensors`` and ``arrays`` (both in the order of ``todo``)."""
    for split in missing:
        mask = (todo["split"] == split).to_numpy(copy=True)  # writable: torch.from_numpy warns on a view
        data = {"image_id": torch.from_numpy(todo["image_id"].to_numpy(dtype=np.int64)[mask]),
                **{k: v[torch.from_numpy(mask)].clone() for k, v in tensors.items()},
                **{k: torch.from_numpy(v[mask]) for k, v in (arrays or {}).items()}}
        with atomic_path(folder / f"{split}.pt") as tmp:
            save_torch(data, tmp)


def run_fill(cfg: Config, rows: pd.DataFrame, actor_cls: type, actor: dict[str, Any],
             pixels_per_row: int) -> pd.DataFrame:
    """``rows`` through ``actor_cls`` (a fill actor: it writes its outputs as pieces and says which
    image failed in ``_failed``): in this process for a small fill (``IN_PROCESS_PIXELS``), else a
    Ray Data actor pool. A failed image stops the fill with one line; its pieces are removed."""
    import time

    from ghns.raykit import map_batches_pandas, resolve_device, torch_threads_for

    start = time.perf_counter()
    if len(rows) * pixels_per_row <= IN_PROCESS_PIXELS:
        here = actor_cls(**actor, device="cpu", threads=torch.get_num_threads())
        rows = rows.reset_index(drop=True).assign(_order=np.arange(len(rows)))
        out = pd.concat([here(rows.iloc[i:i + cfg.batch_size]) for i in range(0, len(rows), cfg.batch_size)],
                        ignore_index=True).drop(columns="_order")
    else:
        out = map_batches_pandas(rows, actor_cls, {**actor, "device": resolve_device(cfg),
                                                   "threads": torch_threads_for(cfg.actors)},
                                 cfg, actors=cfg.actors, batch_size=cfg.batch_size)
    failed = [p for p in out["_failed"] if p]
    if failed:
        shutil.rmtree(actor["folder"], ignore_errors=True)
        raise StageError(f"{len(failed)} catalogued image(s) changed or vanished since the catalog was "
                         f"made, e.g. {why_unreadable(failed[0])}; restore them or rebuild the run "
                         f"('ghns pipeline --force' in a new --run-dir)")
    log.info("trunks: %d images in %.1f s", len(rows), time.perf_counter() - start)
    return out


def finish_fill(run: RunDir, folder: Path, meta: dict[str, Any]) -> None:
    """Write ``folder``'s meta.json, drop its pieces and model, and remove the folders of the same
    crop that it replaces."""
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2))
    shutil.rmtree(folder / "pieces", ignore_errors=True)
    (folder / "model.pt").unlink(missing_ok=True)
    crop = folder.name.rsplit("-", 1)[0]
    for other in run.trunks.glob(f"{crop}-*"):
        if other != folder:
            shutil.rmtree(other, ignore_errors=True)


def assemble(out: pd.DataFrame, pieces: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The actors' pieces (tensors ``keys``), in the order of ``out`` (the rows they were given)."""
    stacked: dict[str, torch.Tensor] = {}
    for name, group in out.groupby("_file", sort=False):
        piece = torch.load(pieces / str(name), map_location="cpu", weights_only=True)
        where = torch.from_numpy(group.index.to_numpy(dtype=np.int64, copy=True))
        rows = torch.from_numpy(group["_row"].to_numpy(dtype=np.int64, copy=True))
        for k in keys:
            if k not in stacked:
                stacked[k] = torch.empty(len(out), *piece[k].shape[1:], dtype=piece[k].dtype)
            stacked[k][where] = piece[k][rows]
    return stacked


def read_trunks(folder: str | Path, split: str, image_ids: np.ndarray | None = None,
                digest: str | None = None) -> dict[str, torch.Tensor]:
    """One split's outputs from ``ensure_trunks``' folder; with ``image_ids`` (the split's rows in
    catalog order) and ``digest`` (the reader's frozen blocks) they must be what the reader needs."""
    folder = Path(folder)
    path = folder / f"{split}.pt"
    if not path.is_file():
        raise StageError(f"{path} is missing (frozen-trunk outputs); rerun the stage that makes them")
    if digest is not None:
        meta = read_json(folder / "meta.json")
        if meta.get("digest") != digest:
            raise StageError(f"{folder} holds another model's frozen-trunk outputs; delete it and rerun")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file: the same advice whatever broke it
        raise StageError(f"{path} cannot be read ({type(exc).__name__}); delete {folder} and rerun") from None
    if image_ids is not None and not np.array_equal(data["image_id"].numpy(), np.asarray(image_ids, dtype=np.int64)):
        raise StageError(f"{path} does not hold the catalog's {split} images; delete {folder} and rerun")
    return data


def why_unreadable(path: str) -> str:
    """The decoder's one-line reason ``path`` cannot be read now."""
    from ghns.data.images import BadImage, load_rgb

    try:
        load_rgb(path)
    except BadImage as exc:
        return str(exc)
    return f"{path} (unreadable when it was read)"


class TrunkActor:
    """Ray Data actor: catalog rows in; each image (or its object crop) decoded once, and it and
    its mirror image through the frozen blocks; the float16 outputs written as one piece per batch
    under ``folder`` (they are too large to travel through the object store), where they are out."""

    def __init__(self, model_path: str, folder: str, image_size: int, crop: str,
                 device: str = "cpu", threads: int = 1) -> None:
        from ghns.models.backbones import cpu_layout
        from ghns.checkpoint import load_model

        if device == "cpu":
            torch.set_num_threads(threads)
        self.device = torch.device(device if device == "cpu" or torch.cuda.is_available() else "cpu")
        self.model, _ = load_model(model_path, "image_classifier")
        self.model.to(self.device).eval()
        self.layout = cpu_layout(self.model, self.device)
        self.folder, self.size, self.crop = Path(folder), image_size, crop

    @torch.no_grad()
    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from ghns.data.tensors import load_resized, to_float

        boxes = None
        if self.crop == "object":
            boxes = [tuple(r) for r in batch[BOX].to_numpy(dtype=float)]
        loaded = load_resized(batch["path"].tolist(), self.size, boxes)
        images = to_float(loaded.images).to(self.device).contiguous(memory_format=self.layout)
        x, xf = (self.model.trunk(v).contiguous().half().cpu() for v in (images, images.flip(-1)))
        name = f"{int(batch['_order'].iloc[0]):09d}.pt"
        with atomic_path(self.folder / name) as tmp:
            save_torch({"x": x, "xf": xf}, tmp)
        out = batch[["_order", "image_id"]].copy()
        out["_file"], out["_row"] = name, np.arange(len(batch))
        out["_failed"] = ["" if i not in loaded.failed else p for i, p in enumerate(batch["path"])]
        out["image_w"] = [w for w, _ in loaded.sizes]
        out["image_h"] = [h for _, h in loaded.sizes]
        return out
