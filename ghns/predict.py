"""Prediction for new images with a finished run: localize, three classifiers, fused (Eq. 11).

In-process torch (a few images do not need a cluster). An image that cannot be read is reported
on its own line and the others are still predicted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ghns.data.catalog import Catalog
from ghns.data.images import BadImage, load_rgb
from ghns.data.tensors import crop_resize, to_float
from ghns.errors import StageError
from ghns.fusion import Fusion
from ghns.localize.boxes import box_around, box_from_map, mass_centre, scale_box
from ghns.models import N_PARTS
from ghns.rejection import Calibration, image_sets, nearest_set_similarity, unknown_sets
from ghns.atomic import atomic_path, atomic_write_text
from ghns.rundir import RunDir
from ghns.train_parts.table import read_embeddings

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None
    error: str | None = None
    reject_score: float | None = None  # the RejectRule's score, where one was given
    rejected: bool = False


REJECT_SCORES = ("combined", "fused")


@dataclass(frozen=True)
class RejectRule:
    """``ghns predict --reject``: "none of these" below ``threshold`` of ``score``, the threshold
    that ``report.json`` records (chosen on known val images only, ``ghns.rejection``)."""

    score: str
    threshold: float
    calibration: Calibration | None = None

    @classmethod
    def of(cls, run: RunDir, score: str = "combined") -> "RejectRule":
        if score not in REJECT_SCORES:
            raise StageError(f"unknown reject score {score!r}; choose one of {', '.join(REJECT_SCORES)}")
        report = json.loads(run.report_json.read_text()) if run.report_json.is_file() else {}
        settings = report.get("reject_threshold") or {}
        if score not in settings:
            raise StageError(f"{run.report_json} has no {score} reject threshold: run 'ghns evaluate --force' "
                             "with this version")
        cal = Calibration.from_dict(settings["calibration"]) if score == "combined" else None
        return cls(score, float(settings[score]), cal)


class Predictor:
    """A finished run's models in this process. ``outputs`` needs only the trained models;
    ``__call__`` (fused top classes) also the fusion that ``report.json`` records."""

    def __init__(self, run: RunDir, need_fusion: bool = True) -> None:
        from ghns.checkpoint import load_model
        from ghns.config import Config

        if need_fusion and not run.report_json.is_file():
            raise StageError(f"{run.report_json} is missing: run 'ghns evaluate' (or 'ghns pipeline') first")
        self.cfg = Config.from_yaml(run.config, saved_run=True)
        self.run = run
        self._train_sets: np.ndarray | None = None
        if self.cfg.object_method == "oracle" or self.cfg.part_method == "oracle":
            raise StageError("this run used oracle boxes, which new images do not have; predict needs "
                             "a run with --object-method parts|cam and --part-method learned")
        self.classes = Catalog.read(run.catalog).classes
        self.fusion: Fusion | None = None
        if need_fusion:
            report = json.loads(run.report_json.read_text())
            # runs evaluated before the log-linear rule carry only Eq. 11 weights
            self.fusion = Fusion.from_dict(report.get("fusion") or {"weights": report["fusion_weights"]})

        self.localizer, self.loc_settings = load_model(run.path / "localize" / "model.pt", "localizer")
        self.parts, self.part_settings = load_model(run.part_networks, "part_networks")
        self.original, self.orig_settings = load_model(run.train_final / "original.pt", "image_classifier")
        self.object, self.obj_settings = load_model(run.train_final / "object.pt", "image_classifier")
        self.parts_classifier, _ = load_model(run.train_final / "parts.pt", "parts_classifier")

    @torch.no_grad()
    def boxes(self, img) -> tuple[tuple, list[tuple]]:
        """Object box and three part boxes of one image, in its pixels (as the localize stage)."""
        size = self.loc_settings["image_size"]
        x = to_float(torch.from_numpy(crop_resize(img, size)).permute(2, 0, 1)[None])
        out = self.localizer(x)
        assign = torch.nn.functional.interpolate(out["assign"], size=(size, size), mode="bilinear",
                                                 align_corners=False)[0].numpy()
        sx, sy = img.width / size, img.height / size
        if self.cfg.object_method == "cam":
            pred = out["cam_logits"].argmax(1)
            cam = torch.nn.functional.interpolate(self.localizer.cam(out["features"], pred)[:, None],
                                                  size=(size, size), mode="bilinear",
                                                  align_corners=False)[0, 0].numpy()
            box, _ = box_from_map(cam, self.cfg.cam_threshold, mode="largest")
        else:
            box, _ = box_from_map(1.0 - assign[-1], self.cfg.foreground_threshold, mode="union")
        obj = scale_box(box, sx, sy)
        side = self.cfg.resolved_part_box_scale() * max(obj[2], obj[3])
        parts = []
        for k in range(assign.shape[0] - 1):
            cx, cy = mass_centre(assign[k])
            parts.append(box_around((cx * sx, cy * sy), side, (img.height, img.width)))
        return obj, parts

    @torch.no_grad()
    def __call__(self, path: str, top: int = 5, reject: RejectRule | None = None) -> Prediction:
        try:
            img = load_rgb(path, self.cfg.max_image_pixels, self.cfg.max_image_bytes)
        except BadImage as exc:
            return Prediction(path, error=str(exc))
        if self.fusion is None:
            raise StageError("this Predictor was made without the run's fusion (need_fusion=False)")
        p_orig, p_obj, emb = self.outputs(img)
        p_parts = self.parts_classifier(torch.from_numpy(emb).reshape(1, -1))[1].softmax(1)[0].numpy()
        fused = self.fusion([p_orig[None], p_obj[None], p_parts[None]])[0]
        order = np.argsort(-fused, kind="stable")[:top]
        out = Prediction(path, top=[(self.classes[i], float(fused[i])) for i in order])
        if reject is not None:
            score = float(fused.max())
            if reject.calibration is not None:
                similarity = nearest_set_similarity(emb[None], self.train_sets())
                score = float(reject.calibration.combined(np.array([score]), similarity)[0])
            out.reject_score, out.rejected = score, score < reject.threshold
        return out

    def train_sets(self) -> np.ndarray:
        """The train images' part embeddings (read once, for the part-set similarity)."""
        if self._train_sets is None:
            meta, emb = read_embeddings(self.run.embeddings)
            self._train_sets = emb[(meta["split"] == "train").to_numpy()]
        return self._train_sets

    @torch.no_grad()
    def outputs(self, img) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's original-image and object softmax scores (C,) and its part embeddings
        (P, D), the inputs of every parts classifier and of the fusion."""
        obj, parts = self.boxes(img)

        def probs(model, settings, box=None):
            x = to_float(torch.from_numpy(crop_resize(img, settings["image_size"], box)).permute(2, 0, 1)[None])
            return model.flip_averaged_logits(x, x.flip(-1)).softmax(1)[0].numpy()

        p_orig = probs(self.original, self.orig_settings)
        p_obj = probs(self.object, self.obj_settings, obj)
        emb, _, _ = self.parts(to_float(self.part_crops(img, parts))[None])
        return p_orig, p_obj, emb[0].numpy()

    def part_crops(self, img, parts: list[tuple] | None = None) -> torch.Tensor:
        """(P, 3, s, s) uint8: the image's part crops at the part networks' size (its boxes
        found here unless given)."""
        parts = parts if parts is not None else self.boxes(img)[1]
        size = self.part_settings["image_size"]
        return torch.stack([torch.from_numpy(crop_resize(img, size, b)).permute(2, 0, 1) for b in parts])


def rejection_inputs(run: RunDir, catalog: Catalog, stamp: dict[str, Any], force: bool = False,
                   progress: bool = True) -> dict[str, dict[str, np.ndarray]] | None:
    """What ``ghns.rejection`` scores, through this module's one path for every image:
    ``{set: {"original", "object": (N, C) scores, "embeddings": (N, P, D), "failed": (N,)
    bool}}`` for each of ``image_sets``; None when the catalog has no unknown images. Cached under
    ``<run>/rejection/`` with ``stamp``; an image that cannot be read is counted and left out (its
    row's ``failed`` is set and the figures skip it)."""
    from tqdm.auto import tqdm

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
                img = load_rgb(path, predictor.cfg.max_image_pixels, predictor.cfg.max_image_bytes)
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


def rejection_crops(run: RunDir, catalog: Catalog, stamp: dict[str, Any], progress: bool = True
                    ) -> dict[str, np.ndarray] | None:
    """The part crops (uint8, (N, P, 3, s, s)) of every rejection image that
    ``rejection_inputs`` scores, in its rows (images it could not read are left out the same way),
    for parts classifiers that run their own part networks (``ghns study --part-networks-lr``).
    Cached as ``<run>/rejection/crops.npz`` with ``stamp``; None when the catalog has no unknown
    images."""
    from tqdm.auto import tqdm

    if not unknown_sets(catalog):
        return None
    paths = {k: v for k, v in image_sets(catalog).items() if v}
    stamp = {**stamp, "images": hashlib.sha1(json.dumps(paths, sort_keys=True).encode()).hexdigest(), "crops": 1}
    folder = run.path / "rejection"
    stamp_file, data_file = folder / "crops-stamp.json", folder / "crops.npz"
    if stamp_file.is_file() and data_file.is_file() and json.loads(stamp_file.read_text()) == json.loads(json.dumps(stamp)):
        return dict(np.load(data_file))
    folder.mkdir(parents=True, exist_ok=True)
    stamp_file.unlink(missing_ok=True)
    predictor = Predictor(run, need_fusion=False)
    out: dict[str, np.ndarray] = {}
    for name, files in paths.items():
        crops = []
        for path in tqdm(files, desc=f"rejection: {name} part crops", unit="img", disable=not progress, leave=False):
            try:
                crops.append(predictor.part_crops(load_rgb(path, predictor.cfg.max_image_pixels, predictor.cfg.max_image_bytes)).numpy())
            except BadImage:
                continue  # rejection_inputs counted and logged it
        size = int(predictor.part_settings["image_size"])
        out[name] = np.stack(crops) if crops else np.zeros((0, N_PARTS, 3, size, size), np.uint8)
    with atomic_path(data_file, suffix=".npz") as tmp:
        arrays: dict[str, Any] = dict(out)
        np.savez(tmp, **arrays)
    atomic_write_text(stamp_file, json.dumps(stamp, sort_keys=True))
    return out
