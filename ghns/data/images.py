"""Image loading that never stops a run for one bad file.

``load_rgb`` decodes any image PIL reads into 8-bit RGB the way a viewer shows it: EXIF
orientation applied, greyscale / palette / CMYK converted, transparency composited on white, and
16-bit or 32-bit greyscale scaled down to 8 bits (not clipped). It raises ``BadImage`` naming the
reason for a missing, zero-byte, unreadable, truncated or too-large file. The pixel limit is read
from the header before anything is decoded, so a decompression bomb costs no memory.
``verify_images`` checks a whole catalog once, in threads, and returns the good rows plus a
count of the skipped ones by reason; every skip is logged with its path.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

# PIL's own decompression-bomb threshold (it warns above it and refuses above twice it).
DEFAULT_MAX_PIXELS = 89_478_485
# Files larger than this are refused before a byte is read (0 = no limit): a valid tiny image
# padded to gigabytes would otherwise be read whole for its content hash.
DEFAULT_MAX_BYTES = 256 * 2**20
# What a broken or hostile file can make PIL raise while opening or decoding it.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
                  ZeroDivisionError, struct.error, Image.DecompressionBombError)


class BadImage(Exception):
    """An image that cannot be used; ``reason`` is one word for counting."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}{': ' + detail if detail else ''}")


def _open(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """Open (header only) and refuse what is missing, empty, over ``max_bytes`` on disk (0: no
    limit), unreadable or over ``max_pixels``."""
    p = Path(path)
    if not p.is_file():
        raise BadImage(p, "missing")
    size = p.stat().st_size
    if size == 0:
        raise BadImage(p, "empty")
    if max_bytes and size > max_bytes:
        raise BadImage(p, "too-large", f"{size} bytes on disk, over the limit of {max_bytes} (--max-image-bytes)")
    try:
        with warnings.catch_warnings():  # our limit below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
    except Image.DecompressionBombError as exc:
        raise BadImage(p, "too-large", str(exc)) from None
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise BadImage(p, "unreadable", str(exc)) from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise BadImage(p, "corrupt", "zero-sized image")
    if width * height > max_pixels:
        img.close()
        raise BadImage(p, "too-large", f"{width}x{height} pixels, over the limit of {max_pixels} "
                                       f"(--max-image-pixels)")
    return img


def _decode(img: Image.Image, path: str | Path) -> Image.Image:
    try:
        img.load()
        return ImageOps.exif_transpose(img)
    except _DECODE_ERRORS as exc:
        reason = "truncated" if "truncated" in str(exc) else "corrupt"
        raise BadImage(path, reason, str(exc)) from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """Greyscale of more than 8 bits (modes I;16*, I, F) scaled to 0..255 by its bit depth."""
    a = np.asarray(img)
    if img.mode == "F":
        top = 1.0 if a.size and float(np.nanmax(a)) <= 1.0 else 255.0
    else:  # 16-bit PNG / TIFF come as I;16* or I holding 0..65535
        top = 255.0 if a.size and int(a.max()) <= 255 and img.mode == "I" else 65535.0
    return Image.fromarray(np.clip(np.nan_to_num(a.astype(np.float64)) * (255.0 / top) + 0.5,
                                   0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any PIL image; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """Decode an image fully and return it as upright 8-bit RGB, or raise ``BadImage``."""
    img = _decode(_open(path, max_pixels, max_bytes), path)
    try:
        return to_rgb(img)
    except _DECODE_ERRORS as exc:
        raise BadImage(path, "corrupt", str(exc)) from None


def check_image(path: str | Path, level: str = "full", max_pixels: int = DEFAULT_MAX_PIXELS,
                max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Return the file's content hash if it is usable at ``level`` ('full' or 'header')."""
    if level == "full":
        load_rgb(path, max_pixels, max_bytes)
    else:
        _open(path, max_pixels, max_bytes).close()
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


@dataclass
class VerifyReport:
    """What ``verify_images`` found: skipped rows by reason and duplicate files."""

    checked: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_paths: list[str] = field(default_factory=list)
    duplicate_groups: list[list[int]] = field(default_factory=list)  # image_ids with equal bytes
    duplicates_across_splits: int = 0

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        parts = [f"{self.checked} images checked"]
        if self.n_skipped:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))
            parts.append(f"{self.n_skipped} skipped ({reasons})")
        if self.duplicate_groups:
            parts.append(f"{len(self.duplicate_groups)} groups of byte-identical files "
                         f"({self.duplicates_across_splits} across splits)")
        return "; ".join(parts)


def verify_images(df: pd.DataFrame, level: str = "full", threads: int = 4, progress: bool = True,
                  max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
                  ) -> tuple[pd.DataFrame, VerifyReport]:
    """Drop rows whose image is missing, empty, unreadable, over ``max_pixels`` or ``max_bytes`` or
    (``level='full'``) truncated or undecodable.

    Returns the kept rows (order preserved) and a report. Byte-identical files are found on the
    way (content hash) and reported, since a duplicate across train and test leaks labels.
    """
    from tqdm.auto import tqdm

    report = VerifyReport(checked=len(df))
    paths = df["path"].tolist()

    def one(path: str):
        try:
            return check_image(path, level, max_pixels, max_bytes), None
        except BadImage as exc:
            return None, exc

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(tqdm(pool.map(one, paths), total=len(paths), desc="checking images",
                            unit="img", disable=not progress or len(paths) < 200, leave=False))
    keep = []
    for (digest, err) in results:
        keep.append(err is None)
        if err is not None:
            report.skipped[err.reason] += 1
            report.skipped_paths.append(err.path)
            log.warning("skipping image %s", err)
    kept = df.loc[keep].copy()
    kept["md5"] = [d for d, _ in results if d is not None]
    for _, group in kept.groupby("md5"):
        if len(group) > 1:
            report.duplicate_groups.append(sorted(group["image_id"].tolist()))
            if group["split"].nunique() > 1:
                report.duplicates_across_splits += 1
    return kept.drop(columns="md5").reset_index(drop=True), report
