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
from ghns.train_final.train import build_image_classifier, image_classifier_loop, load_image_classifier
from ghns.train.specs import ImageClassifierSpec, ModelSpec, OptimSpec, WorkerSpec, to_loop_config


def _spec(run, tmp_path, frozen: int) -> ImageClassifierSpec:
    return ImageClassifierSpec(
        model=ModelSpec(backbone="tiny_cnn", pretrained="none", num_classes=4, frozen_blocks=frozen,
                        image_size=48),
        optim=OptimSpec(lr=1e4, epochs=1, optimizer="sgd", weight_decay=0.0, lr_step_epochs=40,
                        lr_gamma=0.1),
        catalog=str(run / "catalog.parquet"), localization=str(run / "localization.parquet"),
        output=str(tmp_path / "m.pt"), crop="whole", seed=0, lambda_image=0.8, triplet_margin=0.2,
        triplet_mining="hard", batch_classes=2, batch_images=2,
        init_from=str(run / "localize" / "model.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [0, 2])
def test_start_is_the_probe_and_is_kept_when_fine_tuning_is_worse(tiny_run, tmp_path, frozen):
    spec = _spec(tiny_run, tmp_path, frozen)
    image_classifier_loop(to_loop_config(spec, WorkerSpec(history_file=str(tmp_path / "h.json"),
                                                          torch_threads=1, epochs=1)))
    model, settings = load_image_classifier(spec.output)
    history = json.loads((tmp_path / "h.json").read_text())
    assert settings["epoch_kept"] == -1  # lr 1e4 wrecks the first epoch
    assert history[0]["val_acc"] <= settings["val_accuracy"]

    # the probe by hand: flip-averaged pooled features of the starting network
    start = build_image_classifier(spec.model.to_dict())
    assert spec.init_from
    state = torch.load(spec.init_from, weights_only=True)["model"]
    start.backbone.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")})
    start.eval()
    catalog = Catalog.read(spec.catalog)

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
