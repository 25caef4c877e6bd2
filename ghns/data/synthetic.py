"""The embedded default dataset: synthetic "birds" made of three parts, rendered deterministically.

Every object has a head, a body and a tail. Each part comes in four variants (``HEADS``,
``BODIES``, ``TAILS``), and a class is one combination of the three. Classes are chosen so that
many pairs differ in exactly one part (``class_attributes``): swapping that part between two such
classes is what turns a set of parts into a genuine hard negative. Within a class, everything else
varies: position, size, orientation, left/right facing, body colour (the tail takes it too),
background gradient and clutter, brightness and noise. Each image's object box and three part
boxes are exact (they come from the drawn polygons), so localization can be measured.

Nothing is shipped as files: ``render_dataset`` draws the images into a folder (PNG, lossless) on
first use, and the ``synthetic`` reader reads them back like any other dataset. The same spec and
seed give the same pixels and boxes.

Near misses (``render_near_misses``): objects whose part combination is no class, one part
changed from a real class's, drawn like every other image; the classifiers never train on them,
and ``ghns evaluate`` reports how well their confidence tells them from known test images.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from ghns.data.catalog import stratified_holdout
from ghns.data.registry import ReaderResult, register_reader
from ghns.rundir import atomic_path

VERSION = 1
PART_NAMES = ("head", "body", "tail")
HEADS = ("plain", "crested", "longbill", "masked")
BODIES = ("twotone", "striped", "spotted", "banded")
TAILS = ("fan", "fork", "pointed", "square")
VARIANTS = (HEADS, BODIES, TAILS)
# Held-out test images are drawn with a fixed seed: the test set belongs to the dataset.
HOLDOUT_SEED = 0
SUPERSAMPLE = 2


@dataclass(frozen=True)
class SyntheticSpec:
    classes: int = 20
    per_class: int = 60
    image_size: int = 96
    seed: int = 0

    @property
    def key(self) -> str:
        return f"v{VERSION}-c{self.classes}-n{self.per_class}-s{self.image_size}-seed{self.seed}"


# -- classes -----------------------------------------------------------------------------------

def class_attributes(n_classes: int) -> list[tuple[int, ...]]:
    """``n_classes`` (head, body, tail) variant triples with many one-part differences.

    Greedy and deterministic, starting from (0, 0, 0): each step adds the triple that maximises,
    in order, the smallest per-part count of class pairs differing in exactly that one part (so
    every part gets its share of near-miss pairs), the total of such pairs, and the balance of
    variant use; ties go to the lexicographically smallest triple. The first k classes of a
    bigger set are the set for k.
    """
    universe = list(itertools.product(*(range(len(v)) for v in VARIANTS)))
    if not 1 <= n_classes <= len(universe):
        raise ValueError(f"synthetic classes must be in 1..{len(universe)}, got {n_classes}")
    chosen = [universe[0]]
    while len(chosen) < n_classes:
        used = [Counter(c[p] for c in chosen) for p in range(3)]

        def key(c):
            per_part = one_part_pairs(chosen + [c])
            balance = -sum(used[p][c[p]] for p in range(3))
            return min(per_part), sum(per_part), balance, tuple(-x for x in c)

        chosen.append(max((c for c in universe if c not in chosen), key=key))
    return chosen


def one_part_pairs(classes: list[tuple[int, ...]]) -> list[int]:
    """For each part, how many class pairs differ in that part and no other."""
    counts = [0] * len(VARIANTS)
    for a, b in itertools.combinations(classes, 2):
        diff = [x != y for x, y in zip(a, b)]
        if sum(diff) == 1:
            counts[diff.index(True)] += 1
    return counts


def part_difference(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many of the three parts differ between two classes' attribute triples."""
    return sum(x != y for x, y in zip(a, b))


def class_name(attrs: tuple[int, ...]) -> str:
    return "-".join(v[i] for v, i in zip(VARIANTS, attrs))


# -- geometry ----------------------------------------------------------------------------------
# Shapes are polygons in the object frame: units of object length, x towards the head, y up.

def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 36) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


BODY = _ellipse(0.0, 0.0, 0.25, 0.2)
HEAD = _ellipse(0.33, 0.15, 0.14, 0.14)
EYE = _ellipse(0.38, 0.18, 0.025, 0.025, n=12)
SHORT_BEAK = np.array([[0.44, 0.2], [0.44, 0.1], [0.55, 0.15]])
LONG_BEAK = np.array([[0.44, 0.2], [0.44, 0.11], [0.72, 0.15]])
CREST = np.array([[0.24, 0.24], [0.37, 0.28], [0.22, 0.44]])
MASK = np.array([[0.19, 0.13], [0.47, 0.13], [0.47, 0.22], [0.19, 0.22]])
TAIL_SHAPES = {
    "fan": np.array([[-0.2, 0.0], [-0.48, 0.2], [-0.48, -0.2]]),
    "fork": np.array([[-0.2, 0.05], [-0.5, 0.2], [-0.38, 0.0], [-0.5, -0.2], [-0.2, -0.05]]),
    "pointed": np.array([[-0.2, 0.07], [-0.56, 0.0], [-0.2, -0.07]]),
    "square": np.array([[-0.2, 0.11], [-0.46, 0.11], [-0.46, -0.11], [-0.2, -0.11]]),
}
HEAD_COLOURS = {"plain": (205, 55, 50), "crested": (230, 150, 35), "longbill": (150, 65, 175),
                "masked": (60, 140, 205)}


def _body_pattern(kind: str) -> list[np.ndarray]:
    if kind == "striped":
        return [np.array([[x, -0.25], [x + 0.07, -0.25], [x + 0.07, 0.25], [x, 0.25]])
                for x in (-0.19, -0.05, 0.09)]
    if kind == "spotted":
        return [_ellipse(x, y, 0.045, 0.045, n=12)
                for x, y in ((-0.13, 0.06), (-0.02, -0.09), (0.1, 0.07), (0.13, -0.07),
                             (-0.1, -0.09), (0.0, 0.1))]
    if kind == "banded":
        return [np.array([[-0.1, -0.25], [0.04, -0.25], [0.14, 0.25], [0.0, 0.25]])]
    if kind == "twotone":  # a lighter belly: the lower half of the body
        return [np.array([[-0.3, -0.25], [0.3, -0.25], [0.3, -0.02], [-0.3, -0.02]])]
    return []


def _object_parts(attrs: tuple[int, int, int]) -> dict[str, list[tuple[np.ndarray, str]]]:
    """Each part's polygons with a colour role, in the object frame."""
    head, body, tail = (v[i] for v, i in zip(VARIANTS, attrs))
    head_polys = [(HEAD, "head")]
    if head == "crested":
        head_polys.insert(0, (CREST, "head"))
    if head == "masked":
        head_polys.append((MASK, "dark"))
    head_polys += [(LONG_BEAK if head == "longbill" else SHORT_BEAK, "beak"), (EYE, "eye")]
    return {
        "head": head_polys,
        "body": [(BODY, "body")] + [(p, "belly" if body == "twotone" else "pattern")
                                    for p in _body_pattern(body)],
        "tail": [(TAIL_SHAPES[tail], "tail")],
    }


# -- rendering ---------------------------------------------------------------------------------

@dataclass
class Rendered:
    image: Image.Image
    object_box: tuple[float, float, float, float]
    part_boxes: list[tuple[float, float, float, float]]  # head, body, tail; x, y, w, h


def _box(points: np.ndarray, size: int) -> tuple[float, float, float, float]:
    lo = np.clip(points.min(axis=0), 0, size)
    hi = np.clip(points.max(axis=0), 0, size)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


def _jitter(rng: np.random.Generator, colour, amount: float) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def _background(s: int, rng: np.random.Generator) -> Image.Image:
    """A vertical gradient between two muted colours, with clutter smaller than the parts."""
    top, bottom = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    ramp = np.linspace(0, 1, s)[:, None, None]
    bg = (top * (1 - ramp) + bottom * ramp) * np.ones((1, s, 1))
    canvas = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(int(c) for c in rng.uniform(30, 230, 3))
        x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.015, 0.06) * s
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif kind == 1:
            a = rng.uniform(0, 2 * np.pi)
            draw.line([x, y, x + 3 * r * math.cos(a), y + 3 * r * math.sin(a)], fill=colour,
                      width=max(1, int(r / 3)))
        else:
            pts = rng.uniform(-r, r, (3, 2)) + [x, y]
            draw.polygon([tuple(p) for p in pts], fill=colour)
    return canvas


def render_image(attrs: tuple[int, int, int], size: int, rng: np.random.Generator) -> Rendered:
    """Draw one object of class ``attrs`` on a cluttered background; boxes in pixels."""
    s = size * SUPERSAMPLE
    canvas = _background(s, rng)
    draw = ImageDraw.Draw(canvas)

    # pose: length, orientation, facing, aspect
    length = rng.uniform(0.65, 0.9) * s
    angle = math.radians(rng.uniform(-25, 25))
    facing = 1.0 if rng.random() < 0.5 else -1.0
    aspect = rng.uniform(0.9, 1.1)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    parts = _object_parts(attrs)

    def to_image(poly: np.ndarray) -> np.ndarray:  # object frame -> pixels (unit length), y down
        return (poly * [facing, -aspect]) @ rot.T

    unit = np.concatenate([to_image(p) for polys in parts.values() for p, _ in polys])
    length = min(length, 0.96 * s / float((unit.max(axis=0) - unit.min(axis=0)).max()))
    placed = {name: [(to_image(p) * length, role) for p, role in polys]
              for name, polys in parts.items()}
    every = np.concatenate([p for polys in placed.values() for p, _ in polys])
    lo, hi = every.min(axis=0), every.max(axis=0)
    centre = np.array([rng.uniform(-lo[0], s - hi[0]), rng.uniform(-lo[1], s - hi[1])])

    body = tuple(int(c) for c in rng.uniform(70, 220, 3))
    head = _jitter(rng, HEAD_COLOURS[HEADS[attrs[0]]], 10)
    colours = {"head": head, "body": body, "tail": tuple(int(c * 0.7) for c in body),
               "pattern": tuple(int(c * 0.35) for c in body),
               "belly": tuple(int(min(255, 60 + c * 0.9)) for c in body), "dark": (30, 25, 25),
               "beak": _jitter(rng, (225, 190, 60), 12), "eye": (15, 15, 15)}
    body_mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(body_mask).polygon([tuple(p) for p in placed["body"][0][0] + centre], fill=255)
    for name in ("tail", "body", "head"):  # back to front
        for poly, role in placed[name]:
            outline = [(float(p[0]), float(p[1])) for p in poly + centre]
            if role in ("pattern", "belly"):  # patterns stay inside the body outline
                layer = Image.new("L", (s, s), 0)
                ImageDraw.Draw(layer).polygon(outline, fill=255)
                canvas.paste(colours[role], mask=Image.fromarray(
                    np.minimum(np.asarray(layer), np.asarray(body_mask))))
            else:
                draw.polygon(outline, fill=colours[role])

    image = canvas.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.8, 1.2)
    pixels += rng.normal(0, 4.0, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")

    scale = 1.0 / SUPERSAMPLE
    part_boxes = [_box((np.concatenate([p for p, _ in placed[n]]) + centre) * scale, size)
                  for n in PART_NAMES]
    object_box = _box((every + centre) * scale, size)
    return Rendered(image, object_box, part_boxes)


def image_rng(seed: int, class_index: int, image_index: int) -> np.random.Generator:
    """Each image has its own stream: any subset renders identically, in any order."""
    return np.random.default_rng([seed, class_index, image_index])


# -- near misses: objects whose part combination is no class ------------------------------------

NEAR_MISS_STREAM = 1000  # image_rng's class slot for near misses: far above any class index (< 64)


def near_miss_attributes(classes: list[tuple[int, ...]]) -> list[tuple[tuple[int, ...], int, int]]:
    """Every (triple, class index, part) where ``triple`` is no class of ``classes`` and differs
    from class ``class index`` in exactly ``part``: a real class with one part changed. In order of
    class, part, variant (deterministic)."""
    known = set(classes)
    out = []
    for c, attrs in enumerate(classes):
        for part, variants in enumerate(VARIANTS):
            for v in range(len(variants)):
                triple = tuple(v if k == part else a for k, a in enumerate(attrs))
                if triple not in known:
                    out.append((triple, c, part))
    return out


def render_near_misses(folder: Path, spec: SyntheticSpec, count: int, progress: bool = True) -> pd.DataFrame:
    """``count`` near-miss images (``near_miss_attributes`` of the spec's classes, taken in turn
    from a seeded shuffle, every one drawn as usual: pose, colours, clutter) under
    ``<folder>/near-miss/``, rendered once (an annotations file written last marks them done).
    Rows: ``path`` (absolute), ``class_name`` (the triple's name: no class), ``source_class`` (the
    class it differs from), ``changed_part``."""
    from tqdm.auto import tqdm

    out_dir = folder / "near-miss"
    ann_path = out_dir / f"near-miss-{count}.parquet"
    if ann_path.is_file():
        df = pd.read_parquet(ann_path)
        df["path"] = [str(out_dir / p) for p in df["path"]]
        return df
    classes = class_attributes(spec.classes)
    pool = near_miss_attributes(classes)
    order = np.random.default_rng([spec.seed, NEAR_MISS_STREAM]).permutation(len(pool))
    rows = []
    for i in tqdm(range(count), desc="rendering near misses", unit="img", disable=not progress, leave=False):
        triple, source, part = pool[order[i % len(pool)]]
        out = render_image(triple, spec.image_size, image_rng(spec.seed, NEAR_MISS_STREAM, i))
        rel = Path("images") / f"{i:04d}.png"
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        out.image.save(out_dir / rel)
        rows.append({"path": str(rel), "class_name": class_name(triple),
                     "source_class": class_name(classes[source]), "changed_part": PART_NAMES[part]})
    df = pd.DataFrame(rows)
    with atomic_path(ann_path) as tmp:
        df.to_parquet(tmp, index=False)
    df["path"] = [str(out_dir / p) for p in df["path"]]
    return df


def render_dataset(folder: Path, spec: SyntheticSpec, progress: bool = True) -> Path:
    """Render ``spec`` into ``folder`` (images/<class>/<n>.png + annotations.parquet).

    ``annotations.parquet`` is written last, atomically; a folder that has it for the same spec
    is reused as is, a half-rendered one is rendered again.
    """
    from tqdm.auto import tqdm

    ann_path = folder / "annotations.parquet"
    if ann_path.is_file():
        meta = pq.read_schema(ann_path).metadata or {}
        if json.loads(meta.get(b"ghns_synthetic", b"{}")) == asdict(spec):
            return ann_path
    attrs = class_attributes(spec.classes)
    jobs = [(c, i) for c in range(spec.classes) for i in range(spec.per_class)]

    def one(job):
        c, i = job
        out = render_image(attrs[c], spec.image_size, image_rng(spec.seed, c, i))
        rel = Path("images") / class_name(attrs[c]) / f"{i:04d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        out.image.save(folder / rel)
        return {"image_id": c * spec.per_class + i + 1, "path": str(rel),
                "class_name": class_name(attrs[c]),
                "box_x": out.object_box[0], "box_y": out.object_box[1],
                "box_w": out.object_box[2], "box_h": out.object_box[3],
                "part_boxes": [v for b in out.part_boxes for v in b]}

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        rows = list(tqdm(pool.map(one, jobs), total=len(jobs), desc="rendering synthetic dataset",
                         unit="img", disable=not progress, leave=False))
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    table = table.replace_schema_metadata({b"ghns_synthetic": json.dumps(asdict(spec)).encode()})
    with atomic_path(ann_path) as tmp:
        pq.write_table(table, tmp)
    return ann_path


def default_root() -> Path:
    return Path(os.environ.get("GHNS_CACHE", Path.home() / ".cache" / "ghns")) / "synthetic"


@register_reader("synthetic")
def read_synthetic(root: Path | None, cfg=None) -> ReaderResult:
    spec = SyntheticSpec(classes=getattr(cfg, "synthetic_classes", 20),
                         per_class=getattr(cfg, "synthetic_per_class", 60),
                         image_size=getattr(cfg, "synthetic_image_size", 96),
                         seed=getattr(cfg, "synthetic_seed", 0))
    folder = (root if root is not None else default_root()) / spec.key
    ann_path = render_dataset(folder, spec)
    df = pq.read_table(ann_path).to_pandas()
    df["path"] = [str(folder / p) for p in df["path"]]
    df["split"] = "train"
    df = stratified_holdout(df, getattr(cfg, "test_fraction", 0.25), HOLDOUT_SEED, "train", "test")
    attrs = class_attributes(spec.classes)
    info = {"root": str(folder), "part_names": list(PART_NAMES),
            "class_attributes": {class_name(a): list(a) for a in attrs}, "spec": asdict(spec)}
    near = int(getattr(cfg, "synthetic_near_misses", 0) or 0)
    if near > 0:  # images the classifiers should reject: a real class with one part changed
        misses = render_near_misses(folder, spec, near)
        misses["split"] = np.where(np.arange(len(misses)) % 2 == 0, "val", "test")
        info["unknown"] = {"near_miss": {
            "rule": "a class's head, body or tail changed to a variant that makes no class; "
                    "even-numbered images val, odd test",
            "images": misses[["path", "class_name", "split"]].to_dict("records")}}
    return ReaderResult(df, [class_name(a) for a in attrs], info)
