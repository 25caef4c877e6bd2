"""Pictures of a run, drawn with PIL: part boxes now; hard-negative mosaics later."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ghns.data.catalog import Catalog
from ghns.data.images import BadImage, load_rgb
from ghns.errors import StageError
from ghns.rundir import RunDir

PART_COLOURS = ((230, 40, 40), (40, 200, 60), (50, 110, 240))
OBJECT_COLOUR = (255, 255, 255)


def _box(row: pd.Series, prefix: str) -> tuple[float, float, float, float]:
    x, y, w, h = (float(row[f"{prefix}_{c}"]) for c in ("x", "y", "w", "h"))
    return x, y, w, h


def _crop(img: Image.Image, box, side: int) -> Image.Image:
    x, y, w, h = box
    if not np.isfinite([x, y, w, h]).all() or w < 1 or h < 1:
        return Image.new("RGB", (side, side), (40, 40, 40))
    return img.crop((x, y, x + w, y + h)).resize((side, side), Image.Resampling.BILINEAR)


def parts_grid(run: RunDir, rows: int = 12, out: str | None = None, seed: int = 0,
               height: int = 160) -> Path:
    """One row per image (test split first): the image with its object box (white) and three part
    boxes (red, green, blue = part 1, 2, 3), then the three part crops. Returns the PNG path."""
    if not run.localization.is_file():
        raise StageError(f"{run.localization} is missing: run 'ghns localize' first")
    catalog = Catalog.read(run.catalog)
    loc = pd.read_parquet(run.localization).merge(catalog.table[["image_id", "path", "class_name"]],
                                                  on="image_id")
    names = {}
    if run.localization_json.is_file():
        assignment = json.loads(run.localization_json.read_text()).get("part_assignment", {})
        names = {v: k for k, v in assignment.items()}
    pool = loc[loc["split"] == "test"]
    pool = pool if len(pool) >= rows else loc
    pick = pool.sample(n=min(rows, len(pool)), random_state=seed).sort_values("image_id")
    side = height
    canvas = Image.new("RGB", (side + 3 * side + 40, (side + 18) * len(pick) + 22), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    header = "   ".join(f"part{k + 1}" + (f" ({names[f'part{k + 1}']})" if f"part{k + 1}" in names else "")
                       for k in range(3))
    draw.text((6, 4), f"object box (white), parts: {header}", fill=(230, 230, 230))
    for r, (_, row) in enumerate(pick.iterrows()):
        top = 22 + r * (side + 18)
        try:
            img = load_rgb(row["path"])
        except BadImage:
            continue
        scale = min(side / img.width, side / img.height)
        shown = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))))
        d = ImageDraw.Draw(shown)
        for prefix, colour in [("obj", OBJECT_COLOUR)] + [(f"part{k + 1}", PART_COLOURS[k]) for k in range(3)]:
            x, y, w, h = (v * scale for v in _box(row, prefix))
            if np.isfinite([x, y, w, h]).all():
                d.rectangle([x, y, x + w, y + h], outline=colour, width=2)
        canvas.paste(shown, (0, top))
        for k in range(3):
            crop = _crop(img, _box(row, f"part{k + 1}"), side)
            left = side + 10 + k * (side + 10)
            canvas.paste(crop, (left, top))
            draw.rectangle([left, top, left + side - 1, top + side - 1], outline=PART_COLOURS[k], width=2)
        draw.text((2, top + side + 2), f"{row['class_name']} ({row['split']})", fill=(200, 200, 200))
    path = Path(out) if out else run.figures / "parts.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def negatives_mosaic(run: RunDir, rows: int = 8, out: str | None = None, seed: int = 0,
                     side: int = 96) -> Path:
    """One row per hard negative (from different classes): the reference's three part crops, then
    the negative's three part crops, each labelled with the class it comes from; swapped parts
    are framed in red and labelled with their cosine similarity to the part they replaced (in the
    stage-1 embedding). Returns the PNG path."""
    from ghns.train_parts.table import read_embeddings
    from ghns.generate.bank import read_bank
    from ghns.generate.purity import swap_similarities

    bank, _ = read_bank(run.negatives, with_embeddings=False)
    if bank.empty:
        raise StageError(f"no hard negatives in {run.negatives}: run 'ghns generate' first")
    catalog = Catalog.read(run.catalog)
    paths = dict(zip(catalog.table["image_id"], catalog.table["path"]))
    loc = pd.read_parquet(run.localization).set_index("image_id")
    names = catalog.classes
    one_per_class = bank.sample(frac=1.0, random_state=seed).drop_duplicates("class")
    pick = one_per_class.head(rows).sort_values("class")
    meta, emb = read_embeddings(run.embeddings)
    sims = swap_similarities(pick, {int(i): r for r, i in enumerate(meta["image_id"])}, emb)
    label_h = 14
    width = 6 * (side + 6) + 30
    canvas = Image.new("RGB", (width, 20 + len(pick) * (side + 2 * label_h + 8)), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), "reference parts (left) | hard negative parts (right); red frame = swapped part",
              fill=(230, 230, 230))
    cache: dict[int, Image.Image] = {}

    def crop(image_id: int, k: int) -> Image.Image:
        if image_id not in cache:
            try:
                cache[image_id] = load_rgb(paths[image_id])
            except BadImage:
                cache[image_id] = Image.new("RGB", (side, side))
        box = tuple(float(loc.loc[image_id, f"part{k + 1}_{c}"]) for c in "xywh")
        return _crop(cache[image_id], box, side)

    for r, (_, neg) in enumerate(pick.iterrows()):
        top = 22 + r * (side + 2 * label_h + 8)
        ref = int(neg["ref_image"])
        draw.text((2, top), f"class {names[int(neg['class'])]}  score {neg['score']:.3f}",
                  fill=(200, 200, 200))
        for k in range(3):
            left = k * (side + 6)
            canvas.paste(crop(ref, k), (left, top + label_h))
            src = int(neg[f"part{k + 1}_image"])
            left2 = 3 * (side + 6) + 30 + k * (side + 6)
            canvas.paste(crop(src, k), (left2, top + label_h))
            if neg["swapped"][k] == "1":
                draw.rectangle([left2, top + label_h, left2 + side - 1, top + label_h + side - 1],
                               outline=(230, 40, 40), width=3)
            label = names[int(neg[f"part{k + 1}_class"])][:18]
            if neg["swapped"][k] == "1":
                label = f"{label[:12]} cos {sims[r, k]:.2f}"
            draw.text((left2, top + label_h + side + 1), label, fill=(180, 180, 180))
    path = Path(out) if out else run.figures / "negatives.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
