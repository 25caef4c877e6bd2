"""Images to tensors: decode once, resize (optionally inside a box), keep as uint8 in memory.

Fine-grained datasets of the size this project trains on a CPU fit in memory at the training
resolution (CUB-200-2011 at 224 px is 1.8 GB as uint8), and decoding JPEGs every epoch is what
makes CPU training slow; so stages decode once with ``load_resized`` and augment tensors.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from ghns.data.images import BadImage, load_rgb

Box = tuple[float, float, float, float]  # x, y, w, h in pixels


def crop_resize(img: Image.Image, size: int, box: Box | None = None) -> np.ndarray:
    """``img`` cropped to ``box`` (clipped to the image, at least 1 px) and resized to a square."""
    if box is not None and all(np.isfinite(box)):
        x, y, w, h = box
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(img.width), x + max(w, 1.0)), min(float(img.height), y + max(h, 1.0))
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            img = img.crop((x0, y0, x1, y1))
    return np.array(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


class Loaded(NamedTuple):
    images: torch.Tensor      # (N, 3, size, size) uint8
    failed: list[int]         # indices that could not be decoded (left as zeros)
    sizes: list[tuple[int, int]]  # original (width, height) of each image; (0, 0) when failed


def load_resized(paths: Sequence[str], size: int, boxes: Sequence[Box | None] | None = None,
                 progress: bool = False, desc: str = "loading images") -> Loaded:
    """Decode ``paths`` (each cropped to its box when given) into a (N, 3, size, size) uint8
    tensor. Images that fail to decode become zeros and their indices are returned."""
    from tqdm.auto import tqdm

    boxes = boxes if boxes is not None else [None] * len(paths)
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    sizes = [(0, 0)] * len(paths)
    failed: list[int] = []

    def one(i: int) -> None:
        try:
            img = load_rgb(paths[i])
            sizes[i] = img.size
            out[i] = crop_resize(img, size, boxes[i])
        except BadImage:
            failed.append(i)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(tqdm(pool.map(one, range(len(paths))), total=len(paths), desc=desc, unit="img",
                  disable=not progress, leave=False))
    return Loaded(torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), sorted(failed), sizes)


def load_images(rows, size: int, boxes: Sequence[Box | None] | None = None) -> torch.Tensor:
    """``load_resized`` for training: images that cannot be read are an error, not zeros (the
    catalog checked every image, so a failure here means files moved or changed)."""
    from ghns.errors import StageError

    loaded = load_resized(rows["path"].tolist(), size, boxes)
    if loaded.failed:
        first = rows["path"].iloc[loaded.failed[0]]
        raise StageError(f"{len(loaded.failed)} catalogued images can no longer be read "
                         f"(first: {first}); rebuild the catalog with --force")
    return loaded.images


def load_part_crops(paths: Sequence[str], boxes: np.ndarray, size: int) -> tuple[torch.Tensor, list[int]]:
    """Decode each image once and cut its part boxes: ``boxes`` (N, P, 4) -> uint8 tensor
    (N, P, 3, size, size). Images that fail to decode stay zeros; their indices are returned."""
    n, parts = boxes.shape[:2]
    out = np.zeros((n, parts, size, size, 3), dtype=np.uint8)
    failed: list[int] = []

    def one(i: int) -> None:
        try:
            img = load_rgb(paths[i])
        except BadImage:
            failed.append(i)
            return
        for k in range(parts):
            out[i, k] = crop_resize(img, size, tuple(boxes[i, k]))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(n)))
    return torch.from_numpy(out).permute(0, 1, 4, 2, 3).contiguous(), sorted(failed)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [0, 1]."""
    return images.float().div_(255.0)


def augment(images: torch.Tensor, generator: torch.Generator | None = None,
            flip: bool = True, max_shift: float = 0.1) -> torch.Tensor:
    """Random horizontal flips and translations (reflection padded) on a float batch."""
    n, _, h, w = images.shape
    out = images.clone()
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        out[mask] = out[mask].flip(-1)
    if max_shift > 0:
        dx = (torch.rand(n, generator=generator) * 2 - 1) * max_shift * w
        dy = (torch.rand(n, generator=generator) * 2 - 1) * max_shift * h
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = -2 * dx / w
        theta[:, 1, 2] = -2 * dy / h
        grid = torch.nn.functional.affine_grid(theta, list(out.shape), align_corners=False)
        out = torch.nn.functional.grid_sample(out, grid, padding_mode="reflection", align_corners=False)
    return out
