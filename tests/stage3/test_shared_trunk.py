"""Image classifiers that start from the same frozen weights share one pass through them: the
digest that groups them, the on-disk trunk cache of training, and the evaluate actor's scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ghns.data.tensors import load_resized, to_float
from ghns.models.backbones import create_backbone
from ghns.models.classifiers import ImageClassifier
from ghns.stage3.train import _trunk_outputs
from ghns.train.runner import WorkerContext


def _classifier(frozen: int, seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(create_backbone("tiny_cnn", "none"), 3, frozen)


def test_digest_follows_frozen_weights_only():
    a, b = _classifier(2, seed=0), _classifier(2, seed=1)  # tiny_cnn: 3 blocks, 2 frozen
    assert a.trunk_digest() != b.trunk_digest()
    b.backbone.load_state_dict(a.backbone.state_dict())
    assert a.trunk_digest() == b.trunk_digest()
    with torch.no_grad():  # a trainable block and the heads do not count...
        b.backbone.blocks[2][0][0].weight.add_(1.0)
        b.classify.weight.add_(1.0)
    assert a.trunk_digest() == b.trunk_digest()
    with torch.no_grad():  # ...a frozen one does
        b.backbone.blocks[0][0][0].weight.add_(1.0)
    assert a.trunk_digest() != b.trunk_digest()


def test_tail_digest_follows_the_blocks_after_the_frozen_ones():
    a, b = _classifier(2, seed=0), _classifier(2, seed=1)
    b.backbone.load_state_dict(a.backbone.state_dict())
    with torch.no_grad():
        b.classify.weight.add_(1.0)  # the head does not count
    assert a.tail_digest() == b.tail_digest() and a.trunk_digest() == b.trunk_digest()
    with torch.no_grad():
        b.backbone.blocks[2][0][0].weight.add_(1.0)  # a trainable block does
    assert a.tail_digest() != b.tail_digest() and a.trunk_digest() == b.trunk_digest()


def test_trunk_cache_is_shared_and_keyed(tmp_path, monkeypatch):
    images = torch.randint(0, 255, (5, 3, 32, 32), dtype=torch.uint8)
    config = str(tmp_path)  # the trunk cache folder
    ctx = WorkerContext({})
    a = _classifier(3)
    first = _trunk_outputs(a, images, ctx, config)
    assert first.dtype == torch.float16 and len(list(tmp_path.glob("*.pt"))) == 1
    with torch.no_grad():
        expected = a.trunk(to_float(images)).half()
    torch.testing.assert_close(first, expected, atol=1e-2, rtol=1e-2)  # channels-last on CPU: rounding

    b = _classifier(3, seed=5)
    b.backbone.load_state_dict(a.backbone.state_dict())
    monkeypatch.setattr(b, "trunk", lambda x: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert torch.equal(_trunk_outputs(b, images, ctx, config), first)  # read, not recomputed
    monkeypatch.undo()

    other = images.clone()
    other[0, 0, 0, 0] ^= 1  # one pixel differs (another crop, split or shard): another entry
    _trunk_outputs(b, other, ctx, config)
    _trunk_outputs(b, images[:, :, :16, :16].contiguous(), ctx, config)  # another size: another entry
    _trunk_outputs(_classifier(3, seed=9), images, ctx, config)  # other frozen weights
    assert len(list(tmp_path.glob("*.pt"))) == 4


def test_torn_cache_file_is_recomputed(tmp_path):
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    config = str(tmp_path)  # the trunk cache folder
    a, ctx = _classifier(2), WorkerContext({})
    first = _trunk_outputs(a, images, ctx, config)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"torn")
    assert torch.equal(_trunk_outputs(a, images, ctx, config), first)


@pytest.mark.slow
def test_score_actor_matches_each_model_alone(tiny_run):
    from ghns.stage3.evaluate import ScoreActor
    from ghns.stage3.train import load_image_classifier

    names = ["original", "object", "original_seed1"]
    models = {n: str(tiny_run / "train-final" / f"{n}.pt") for n in names}
    actor = ScoreActor(models)
    groups = sorted(sorted(n for n, _ in members) for members in actor.groups.values())
    assert groups == [["object"], ["original", "original_seed1"]]  # seeds share the frozen trunk

    catalog = pd.read_parquet(tiny_run / "catalog.parquet")
    loc = pd.read_parquet(tiny_run / "localization.parquet")
    rows = catalog[catalog["split"] == "test"].head(6).merge(
        loc[["image_id"] + [f"obj_{c}" for c in "xywh"]], on="image_id")
    rows["_order"] = np.arange(len(rows))
    scored = actor(rows)
    for name, path in models.items():
        model, settings = load_image_classifier(path)
        boxes = None
        if settings["crop"] == "object":
            boxes = [tuple(r) for r in rows[[f"obj_{c}" for c in "xywh"]].to_numpy(dtype=float)]
        x = to_float(load_resized(rows["path"].tolist(), settings["image_size"], boxes).images)
        with torch.no_grad():  # flip-averaged, as evaluate scores
            alone = model.flip_averaged_logits(x, x.flip(-1)).softmax(1).numpy()
        np.testing.assert_allclose(np.stack(scored[name].to_numpy()), alone, atol=1e-5)


@pytest.mark.slow
def test_classifiers_with_equal_backbones_share_the_pooled_features(tiny_run, tmp_path, monkeypatch):
    """Two classifiers that differ only in their heads (what seed-ensemble members that kept
    their probe starts are): one pooled pass per orientation, and each its own scores."""
    from ghns.checkpoint import save_checkpoint
    from ghns.stage3.evaluate import ScoreActor
    from ghns.stage3.train import load_image_classifier

    model, settings = load_image_classifier(tiny_run / "train-final" / "original.pt")
    with torch.no_grad():
        model.classify.weight.mul_(-1.0)  # another head on the same backbone
    save_checkpoint(tmp_path / "twin.pt", model, settings)
    models = {"original": str(tiny_run / "train-final" / "original.pt"), "twin": str(tmp_path / "twin.pt")}
    actor = ScoreActor(models)
    assert len(actor.groups) == 1 and len(set(actor.tails.values())) == 1

    catalog = pd.read_parquet(tiny_run / "catalog.parquet")
    rows = catalog[catalog["split"] == "test"].head(4).copy()
    rows["_order"] = np.arange(len(rows))
    calls = []
    pooled = ImageClassifier.pooled
    monkeypatch.setattr(ImageClassifier, "pooled", lambda self, *a, **k: calls.append(1) or pooled(self, *a, **k))
    scored = actor(rows)
    assert len(calls) == 2  # the image and its mirror image, once for both classifiers
    monkeypatch.undo()
    x = to_float(load_resized(rows["path"].tolist(), settings["image_size"]).images)
    for name, path in models.items():
        alone, _ = load_image_classifier(path)
        with torch.no_grad():
            want = alone.eval().flip_averaged_logits(x, x.flip(-1)).softmax(1).numpy()
        np.testing.assert_allclose(np.stack(scored[name].to_numpy()), want, atol=1e-5)
    assert not np.allclose(np.stack(scored["original"].to_numpy()), np.stack(scored["twin"].to_numpy()))
