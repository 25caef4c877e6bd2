"""Rejection: does a classifier's confidence tell known images from images of no class?

A run's catalog may name images that belong to no class it trains on (``catalog.info["unknown"]``):

* ``near_miss`` (the synthetic set, ``--synthetic-near-misses``): a real class with one part
  changed to a combination that is no class. These are what a generated hard negative imitates,
  so this is where the generator must show if it shows anywhere.
* ``open_set`` (any dataset, ``--open-set-classes K``): every image of K classes held out by a
  fixed rule (``ghns.data.catalog.open_set_classes``), never trained on.

Each set is scored against the known test images by AUROC (``ghns.stats.auroc``) of four
scores, high meaning "known":

* ``parts``, ``fused``: the maximum softmax score of the parts classifier alone and of the fused
  prediction (a classifier's confidence);
* ``similarity``: how close the image's parts are to a training image's, as a set: the largest
  mean cosine similarity of its part embeddings to those of one train image
  (``nearest_set_similarity``, exact). It needs no classifier and no negative: an object whose
  parts were never seen together sits far from every train image even when each part is familiar;
* ``combined``: the product of the two known-val p-values (``Calibration``): the share of known
  val images whose fused score, and whose similarity, is at most the image's. Either being unusual
  rejects; nothing is tuned, and no unknown image is needed to set it. Every image, known or
unknown, goes through the same in-process path (``ghns.predict.Predictor``: boxes, crops, the
classifiers), so both sides are computed alike; the inputs (original and object scores, part
embeddings: ``ghns.predict.rejection_inputs``) are cached in ``<run>/rejection/inputs.npz`` with
the stamp of what made them, and any parts classifier (the study's arms) is scored on them in
milliseconds. This module is the arithmetic only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from ghns.atomic import atomic_path
from ghns.data.catalog import Catalog
from ghns.stats import auroc

if TYPE_CHECKING:
    from ghns.fusion import Fusion

REJECT_ACCEPT = 0.95  # the share of known val images that ghns predict --reject lets through
KINDS = ("near_miss", "open_set")  # the metric of each is f"{kind}_auroc"
SCORES = ("parts", "fused", "similarity", "combined")  # what rejection_figures reports, where given
QUANTILES = 101  # a Calibration keeps this many quantiles of each known val score


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


def nearest_set_similarity(queries: np.ndarray, train: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(M,) for each query set of unit-length part embeddings (M, P, D): the largest mean cosine
    similarity of its parts to those of one train image (N, P, D), i.e. its nearest train image in
    the space of whole part sets. Exact (a chunked matrix product: M x N x P x D multiply-adds)."""
    train = np.asarray(train, np.float32)
    if train.ndim != 3:
        raise ValueError(f"train part embeddings must be (N, P, D), not {train.shape}")
    parts = train.shape[1]
    q = np.asarray(queries, np.float32).reshape(len(queries), -1)
    t = train.reshape(len(train), -1)
    if not len(t):
        return np.full(len(q), -np.inf, np.float32)
    out = np.empty(len(q), np.float32)
    for i in range(0, len(q), chunk):
        out[i:i + chunk] = (q[i:i + chunk] @ t.T).max(axis=1) / parts
    return out


@dataclass(frozen=True)
class Calibration:
    """What "usual" is for known images: ``QUANTILES`` quantiles of the known val images' fused
    score and part-set similarity. ``pvalue`` maps a score to the (interpolated) share of known
    val images scoring at most as high; ``combined`` is the product of the two p-values."""

    fused: tuple[float, ...]
    similarity: tuple[float, ...]

    @classmethod
    def fit(cls, val_fused: np.ndarray, val_similarity: np.ndarray) -> "Calibration":
        levels = np.linspace(0.0, 1.0, QUANTILES)

        def q(x: np.ndarray) -> tuple[float, ...]:
            x = np.asarray(x, np.float64)
            return tuple(float(v) for v in np.quantile(x, levels)) if len(x) else (0.0,) * QUANTILES
        return cls(q(val_fused), q(val_similarity))

    @staticmethod
    def pvalue(quantiles: tuple[float, ...], x: np.ndarray) -> np.ndarray:
        """Share of known val at or below ``x``: 0 below the smallest, 1 at or above the largest,
        linear between neighbouring quantiles (ties: the largest level of a repeated value)."""
        qs = np.asarray(quantiles, np.float64)
        levels = np.linspace(0.0, 1.0, len(qs))
        x = np.asarray(x, np.float64)
        # np.interp needs increasing x-coordinates: keep the last level of each repeated quantile
        last = np.r_[qs[1:] != qs[:-1], True]
        return np.interp(x, qs[last], levels[last], left=0.0, right=1.0)

    def combined(self, fused: np.ndarray, similarity: np.ndarray) -> np.ndarray:
        return self.pvalue(self.fused, fused) * self.pvalue(self.similarity, similarity)

    def to_dict(self) -> dict[str, list[float]]:
        return {"fused": [round(v, 6) for v in self.fused], "similarity": [round(v, 6) for v in self.similarity]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        return cls(tuple(d["fused"]), tuple(d["similarity"]))


def confidences(inputs: dict[str, dict[str, np.ndarray]], parts: Callable[[str, np.ndarray], np.ndarray],
                fusion: Fusion, similarity: dict[str, np.ndarray] | None = None,
                calibration: Calibration | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``{set: {"parts": (N,), "fused": (N,)}}``: each image's maximum softmax score, parts alone
    and fused with the run's original and object scores by ``fusion``; ``parts(set, embeddings)``
    gives a parts classifier's softmax scores (computed, or saved by the study). With each set's
    ``similarity`` (``nearest_set_similarity``: the same for every classifier, so computed once by
    the caller) also ``"similarity"``, and with a ``calibration`` as well ``"combined"``."""
    out = {}
    for name, d in inputs.items():
        p = parts(name, d["embeddings"])
        out[name] = {"parts": confidence(p), "fused": confidence(fusion([d["original"], d["object"], p]))}
        if similarity is not None:
            out[name]["similarity"] = similarity[name]
            if calibration is not None:
                out[name]["combined"] = calibration.combined(out[name]["fused"], out[name]["similarity"])
    return out


def rejection_figures(conf: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """``{kind: {"images": N, "known_images": K, "auroc": {score: AUROC}, "val_auroc": {...}}}``
    for each unknown kind in ``conf`` (``confidences``' output) and each of ``SCORES`` it holds:
    test AUROC (known test images against the kind's test images) and the same on val where both
    val sets exist."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        if kind not in conf:
            continue
        known = conf["known"]
        scores = [w for w in SCORES if w in known]
        out[kind] = {"images": int(len(conf[kind]["parts"])), "known_images": int(len(known["parts"])),
                     "auroc": {w: round(auroc(known[w], conf[kind][w]), 4) for w in scores}}
        if f"{kind}_val" in conf and "known_val" in conf:
            out[kind]["val_auroc"] = {w: round(auroc(conf["known_val"][w], conf[f"{kind}_val"][w]), 4)
                                      for w in scores}
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
