"""Image loading that never stops a run for one bad file.

``load_rgb`` turns greyscale, palette, CMYK and RGBA images into RGB (alpha composited on white)
and raises ``BadImage`` naming the reason for a missing, zero-byte, unreadable or truncated file.
``verify_images`` checks a whole catalog once, in threads, and returns the good rows plus a
count of the skipped ones by reason; every skip is logged with its path.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


class BadImage(Exception):
    """An image that cannot be used; ``reason`` is one word for counting."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}{': ' + detail if detail else ''}")


def _open(path: str | Path) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise BadImage(p, "missing")
    if p.stat().st_size == 0:
        raise BadImage(p, "empty")
    try:
        return Image.open(p)
    except (UnidentifiedImageError, OSError) as exc:
        raise BadImage(p, "unreadable", str(exc)) from None


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any PIL image; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully and return it as RGB, or raise ``BadImage``."""
    img = _open(path)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(path, "truncated" if "truncated" in str(exc) else "corrupt", str(exc)) from None
    return to_rgb(img)


def check_image(path: str | Path, level: str = "full") -> str:
    """Return the file's content hash if it is usable at ``level`` ('full' or 'header')."""
    img = _open(path)
    if level == "full":
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadImage(path, "truncated" if "truncated" in str(exc) else "corrupt",
                           str(exc)) from None
    elif img.size[0] == 0 or img.size[1] == 0:
        raise BadImage(path, "corrupt", "zero-sized image")
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


def verify_images(df: pd.DataFrame, level: str = "full", threads: int = 4,
                  progress: bool = True) -> tuple[pd.DataFrame, VerifyReport]:
    """Drop rows whose image is missing, empty, unreadable or (``level='full'``) truncated.

    Returns the kept rows (order preserved) and a report. Byte-identical files are found on the
    way (content hash) and reported, since a duplicate across train and test leaks labels.
    """
    from tqdm.auto import tqdm

    report = VerifyReport(checked=len(df))
    paths = df["path"].tolist()

    def one(path: str):
        try:
            return check_image(path, level), None
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
