"""Prediction for new images with a finished run: localize, three classifiers, fused (Eq. 11).

In-process torch (a few images do not need a cluster). An image that cannot be read is reported
on its own line and the others are still predicted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from ghns.data.catalog import Catalog
from ghns.data.images import BadImage, load_rgb
from ghns.data.tensors import crop_resize, to_float
from ghns.errors import StageError
from ghns.fusion import Fusion
from ghns.localize.boxes import box_around, box_from_map, mass_centre, scale_box
from ghns.rundir import RunDir


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None
    error: str | None = None


def reject_threshold(run: RunDir) -> float:
    """The fused score below which ``ghns predict --reject`` answers "none of these": the one
    ``report.json`` records (chosen on known val images only)."""
    report = json.loads(run.report_json.read_text()) if run.report_json.is_file() else {}
    if "reject_threshold" not in report:
        raise StageError(f"{run.report_json} has no reject_threshold: run 'ghns evaluate --force' with this version")
    return float(report["reject_threshold"]["fused"])


class Predictor:
    """A finished run's models in this process. ``outputs`` needs only the trained models;
    ``__call__`` (fused top classes) also the fusion that ``report.json`` records."""

    def __init__(self, run: RunDir, need_fusion: bool = True) -> None:
        from ghns.checkpoint import load_model
        from ghns.config import Config

        if need_fusion and not run.report_json.is_file():
            raise StageError(f"{run.report_json} is missing: run 'ghns evaluate' (or 'ghns pipeline') first")
        self.cfg = Config.from_yaml(run.config, saved_run=True)
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
    def __call__(self, path: str, top: int = 5) -> Prediction:
        try:
            img = load_rgb(path, self.cfg.max_image_pixels)
        except BadImage as exc:
            return Prediction(path, error=str(exc))
        if self.fusion is None:
            raise StageError("this Predictor was made without the run's fusion (need_fusion=False)")
        p_orig, p_obj, emb = self.outputs(img)
        p_parts = self.parts_classifier(torch.from_numpy(emb).reshape(1, -1))[1].softmax(1)[0].numpy()
        fused = self.fusion([p_orig[None], p_obj[None], p_parts[None]])[0]
        order = np.argsort(-fused, kind="stable")[:top]
        return Prediction(path, top=[(self.classes[i], float(fused[i])) for i in order])

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
        size = self.part_settings["image_size"]
        crops = torch.stack([torch.from_numpy(crop_resize(img, size, b)).permute(2, 0, 1) for b in parts])
        emb, _, _ = self.parts(to_float(crops)[None])
        return p_orig, p_obj, emb[0].numpy()
