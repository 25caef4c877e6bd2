"""Rejection: does a classifier's confidence tell known images from images of no class?

A run's catalog may name images that belong to no class it trains on (``catalog.info["unknown"]``):

* ``near_miss`` (the synthetic set, ``--synthetic-near-misses``): a real class with one part
  changed to a combination that is no class. These are what a generated hard negative imitates,
  so this is where the generator must show if it shows anywhere.
* ``open_set`` (any dataset, ``--open-set-classes K``): every image of K classes held out by a
  fixed rule (``ghns.data.catalog.open_set_classes``), never trained on.

Each set is scored against the known test images by AUROC (``ghns.stats.auroc``) of the maximum
softmax score, for the parts classifier alone and for the fused prediction. Every image, known or
unknown, goes through the same in-process path (``ghns.predict.Predictor``: boxes, crops, the
classifiers), so both sides are computed alike; the inputs (original and object scores, part
embeddings) are cached in ``<run>/rejection/inputs.npz`` with the stamp of what made them, and any
parts classifier (the study's arms) is scored on them in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from ghns.atomic import atomic_path, atomic_write_text
from ghns.data.catalog import Catalog
from ghns.rundir import RunDir
from ghns.stats import auroc

if TYPE_CHECKING:
    from ghns.fusion import Fusion

log = logging.getLogger(__name__)
REJECT_ACCEPT = 0.95  # the share of known val images that ghns predict --reject lets through
KINDS = ("near_miss", "open_set")  # the metric of each is f"{kind}_auroc"


def unknown_sets(catalog: Catalog) -> dict[str, pd.DataFrame]:
    """``{kind: rows (path, class_name, split)}`` of the catalog's unknown images, in ``KINDS``
    order; ``split`` is "val" (where rejection settings are chosen) or "test" (reported)."""
    unknown = catalog.info.get("unknown") or {}
    out = {}
    for k in KINDS:
        if k in unknown and unknown[k].get("images"):
            rows = pd.DataFrame(unknown[k]["images"])
            if "split" not in rows:
                rows["split"] = "test"
            out[k] = rows[["path", "class_name", "split"]]
    return out


def image_sets(catalog: Catalog) -> dict[str, list[str]]:
    """The images that rejection scores, by set: "known" (the test split), "known_val" (val),
    and each unknown kind's test ("near_miss") and val ("near_miss_val") images."""
    out = {"known": catalog.split("test")["path"].tolist(), "known_val": catalog.split("val")["path"].tolist()}
    for kind, rows in unknown_sets(catalog).items():
        out[kind] = rows.loc[rows["split"] == "test", "path"].tolist()
        out[f"{kind}_val"] = rows.loc[rows["split"] == "val", "path"].tolist()
    return out


def confidence(scores: np.ndarray) -> np.ndarray:
    """The maximum softmax score of each row: high = the classifier takes it for a known class."""
    return np.asarray(scores).max(axis=1)


def compute_inputs(run: RunDir, catalog: Catalog, stamp: dict[str, Any], force: bool = False,
                   progress: bool = True) -> dict[str, dict[str, np.ndarray]] | None:
    """``{set: {"original", "object": (N, C) scores, "embeddings": (N, P, D), "failed": (N,)
    bool}}`` for each of ``image_sets``; None when the catalog has no unknown images. Cached under
    ``<run>/rejection/`` with ``stamp``; an image that cannot be read is counted and left out (its
    row's ``failed`` is set and the figures skip it)."""
    from tqdm.auto import tqdm

    from ghns.data.images import BadImage, load_rgb
    from ghns.predict import Predictor

    sets = unknown_sets(catalog)
    if not sets:
        return None
    paths = {k: v for k, v in image_sets(catalog).items() if v}
    stamp = {**stamp, "images": hashlib.sha1(json.dumps(paths, sort_keys=True).encode()).hexdigest()}
    folder = run.path / "rejection"
    stamp_file, data_file = folder / "stamp.json", folder / "inputs.npz"
    if not force and stamp_file.is_file() and data_file.is_file() and \
            json.loads(stamp_file.read_text()) == json.loads(json.dumps(stamp)):
        flat = dict(np.load(data_file))
        return {name: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(name + "/")}
                for name in {k.split("/", 1)[0] for k in flat}}
    folder.mkdir(parents=True, exist_ok=True)
    stamp_file.unlink(missing_ok=True)
    predictor = Predictor(run, need_fusion=False)  # outputs only: evaluate has not chosen the fusion yet
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, files in paths.items():
        orig, obj, emb, failed = [], [], [], []
        for path in tqdm(files, desc=f"rejection: {name} images", unit="img", disable=not progress, leave=False):
            try:
                img = load_rgb(path, predictor.cfg.max_image_pixels)
            except BadImage as exc:
                log.warning("rejection: skipped %s (%s)", path, exc)
                failed.append(True)
                continue
            o, b, e = predictor.outputs(img)
            orig.append(o)
            obj.append(b)
            emb.append(e)
            failed.append(False)
        if sum(failed):
            log.warning("rejection: %d of %d %s images could not be read", sum(failed), len(files), name)
        out[name] = {"original": np.stack(orig), "object": np.stack(obj), "embeddings": np.stack(emb),
                     "failed": np.asarray(failed, bool)}
    with atomic_path(data_file, suffix=".npz") as tmp:
        arrays: dict[str, Any] = {f"{n}/{k}": v for n, d in out.items() for k, v in d.items()}
        np.savez_compressed(tmp, **arrays)
    atomic_write_text(stamp_file, json.dumps(stamp, sort_keys=True))
    return out


def confidences(inputs: dict[str, dict[str, np.ndarray]], parts: Callable[[str, np.ndarray], np.ndarray],
                fusion: Fusion) -> dict[str, dict[str, np.ndarray]]:
    """``{set: {"parts": (N,), "fused": (N,)}}``: each image's maximum softmax score, parts alone
    and fused with the run's original and object scores by ``fusion``; ``parts(set, embeddings)``
    gives a parts classifier's softmax scores (computed, or saved by the study)."""
    out = {}
    for name, d in inputs.items():
        p = parts(name, d["embeddings"])
        out[name] = {"parts": confidence(p), "fused": confidence(fusion([d["original"], d["object"], p]))}
    return out


def rejection_figures(conf: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """``{kind: {"images": N, "known_images": K, "auroc": {"parts", "fused"}, "val_auroc": {...}}}``
    for each unknown kind in ``conf`` (``confidences``' output): test AUROC (known test images
    against the kind's test images) and the same on val where both val sets exist."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        if kind not in conf:
            continue
        known = conf["known"]
        out[kind] = {"images": int(len(conf[kind]["parts"])), "known_images": int(len(known["parts"])),
                     "auroc": {w: round(auroc(known[w], conf[kind][w]), 4) for w in ("parts", "fused")}}
        if f"{kind}_val" in conf and "known_val" in conf:
            out[kind]["val_auroc"] = {w: round(auroc(conf["known_val"][w], conf[f"{kind}_val"][w]), 4)
                                      for w in ("parts", "fused")}
    return out


def reject_threshold(val_confidence: np.ndarray, accept: float = REJECT_ACCEPT) -> float:
    """The confidence below which an input is rejected, chosen on known val images only: the
    largest of their confidences that at least share ``accept`` of them reach
    (no unknown image is needed to choose it)."""
    if not len(val_confidence):
        return 0.0
    ordered = np.sort(np.asarray(val_confidence, np.float64))
    k = int(np.floor(len(ordered) * (1.0 - accept) + 1e-9))  # the k lowest may be rejected
    return float(ordered[min(k, len(ordered) - 1)])


def write_inputs_for_study(inputs: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """The part embeddings of every rejection image in one file for the study's workers."""
    with atomic_path(path, suffix=".npz") as tmp:
        emb: dict[str, Any] = {name: d["embeddings"] for name, d in inputs.items()}
        np.savez_compressed(tmp, **emb)
