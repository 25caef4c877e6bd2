"""LP-FT of the image classifiers: before any fine-tuning step the classifier is the linear probe
of its flip-averaged pooled features (the same val accuracy), and fine-tuning that does not beat
it on val keeps it."""

from __future__ import annotations

import json

import pytest
import torch

from ghns.data.catalog import Catalog
from ghns.data.tensors import load_resized, to_float
from ghns.probe import fit_probe
from ghns.stage3.train import build_image_classifier, image_classifier_loop, load_image_classifier


def _config(run, tmp_path, frozen: int) -> dict:
    return {"catalog": str(run / "catalog.parquet"), "localization": str(run / "localization.parquet"),
            "crop": "whole", "image_size": 48, "backbone": "tiny_cnn", "pretrained": "none",
            "init_from": str(run / "localize" / "model.pt"), "frozen_blocks": frozen,
            "trunk_cache": None, "lam": 0.8, "margin": 0.2, "mining": "hard", "epochs": 1,
            "lr": 1e4, "seed": 0, "num_classes": 4, "output": str(tmp_path / "m.pt"),
            "history_file": str(tmp_path / "h.json"), "optimizer": "sgd", "weight_decay": 0.0,
            "lr_step": 40, "lr_gamma": 0.1, "batch_classes": 2, "batch_images": 2, "torch_threads": 1}


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [0, 2])
def test_start_is_the_probe_and_is_kept_when_fine_tuning_is_worse(tiny_run, tmp_path, frozen):
    config = _config(tiny_run, tmp_path, frozen)
    image_classifier_loop(config)
    model, settings = load_image_classifier(config["output"])
    history = json.loads((tmp_path / "h.json").read_text())
    assert settings["epoch_kept"] == -1  # lr 1e4 wrecks the first epoch
    assert history[0]["val_acc"] <= settings["val_accuracy"]

    # the probe by hand: flip-averaged pooled features of the starting network
    start = build_image_classifier(config)
    state = torch.load(config["init_from"], weights_only=True)["model"]
    start.backbone.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")})
    start.eval()
    catalog = Catalog.read(config["catalog"])

    def feats(split):
        rows = catalog.split(split)
        x = to_float(load_resized(rows["path"].tolist(), 48).images)
        with torch.no_grad():
            if frozen:  # the loop caches the frozen trunk in half precision
                f = lambda v: start.pooled(start.trunk(v).half().float(), cached=True)  # noqa: E731
            else:
                f = lambda v: start.pooled(v)  # noqa: E731
            return (f(x) + f(x.flip(-1))) / 2, torch.tensor(rows["label"].to_numpy()), x

    (tx, ty, _), (vx, vy, vimg) = feats("train"), feats("val")
    probe = fit_probe(tx, ty, vx, vy, 4)
    assert settings["val_accuracy"] == pytest.approx(probe.val_accuracy)
    with torch.no_grad():
        kept = model.flip_averaged_logits(vimg, vimg.flip(-1))
    assert (kept.argmax(1) == probe.logits(vx).argmax(1)).float().mean() >= 0.9
    if not frozen:
        assert torch.allclose(kept, probe.logits(vx), atol=1e-4)
