"""Frozen-trunk outputs once per run (``ghns.trunks``): the digests that key them, what they hold
(each image's and its mirror image's frozen-block outputs), that a second reader reads instead of
recomputing, that evaluate's scores from them equal each classifier run alone on the images, and
that classifiers with equal backbones share the pooled features."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from ghns.config import Config
from ghns.data.catalog import Catalog
from ghns.data.tensors import load_resized, to_float
from ghns.errors import StageError
from ghns.models.backbones import create_backbone
from ghns.models.classifiers import ImageClassifier
from ghns.rundir import RunDir
from ghns.trunks import ensure_trunks, image_rows, read_trunks, trunk_folder


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


def test_trunk_folder_follows_weights_size_crop_images_and_boxes(tmp_path):
    run = RunDir(tmp_path / "run")
    rows = (np.arange(4), [f"/d/{i}.jpg" for i in range(4)])
    import pandas as pd

    table = pd.DataFrame({"image_id": rows[0], "path": rows[1], "split": "train", "label": 0,
                          **{f"obj_{c}": 1.0 for c in "xywh"}})
    a = _classifier(2)
    base = trunk_folder(run, a, 32, "whole", table)
    assert base == trunk_folder(run, a, 32, "whole", table.copy())  # a pure function of its inputs
    moved = table.copy()
    moved.loc[0, "path"] = "/e/0.jpg"
    boxed = table.copy()
    boxed.loc[1, "obj_w"] = 2.0
    others = {trunk_folder(run, _classifier(2, seed=1), 32, "whole", table),  # other frozen weights
              trunk_folder(run, _classifier(1), 32, "whole", table),  # fewer frozen blocks
              trunk_folder(run, a, 48, "whole", table),  # another size
              trunk_folder(run, a, 32, "object", table),  # another crop
              trunk_folder(run, a, 32, "whole", moved),  # an image moved
              trunk_folder(run, a, 32, "whole", table.iloc[:3])}  # an image fewer
    assert base not in others and len(others) == 6
    assert trunk_folder(run, a, 32, "object", table) != trunk_folder(run, a, 32, "object", boxed)
    assert trunk_folder(run, a, 32, "whole", boxed) == base  # whole images do not read boxes


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("ray"))
    return RunDir(run)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["in this process", "ray data"])
def test_trunks_hold_each_image_and_its_mirror_and_are_read_not_recomputed(run_copy, monkeypatch, where):
    import ghns.trunks
    from ghns.train_final.train import load_image_classifier

    if where == "ray data":  # a fill of more images than the tiny run has
        monkeypatch.setattr(ghns.trunks, "IN_PROCESS_PIXELS", 0)
    run = run_copy
    cfg = Config(run_dir=str(run.path))
    catalog = Catalog.read(run.catalog)
    model, settings = load_image_classifier(run.train_final / "object.pt")
    folder = ensure_trunks(cfg, run, catalog, model, settings, "object", ("val",))
    assert folder.parent == run.trunks and folder.name.startswith("object-")
    rows = image_rows(run, catalog, "object")
    val = rows[rows["split"] == "val"]
    data = read_trunks(folder, "val", val["image_id"].to_numpy(), model.trunk_digest())
    boxes = [tuple(r) for r in val[[f"obj_{c}" for c in "xywh"]].to_numpy(dtype=float)]
    x = to_float(load_resized(val["path"].tolist(), settings["image_size"], boxes).images)
    with torch.no_grad():
        model.eval()
        want, want_flipped = model.trunk(x).half(), model.trunk(x.flip(-1)).half()
    assert data["x"].dtype == torch.float16 and data["x"].shape == want.shape
    torch.testing.assert_close(data["x"], want, atol=1e-2, rtol=1e-2)  # channels-last on CPU: rounding
    torch.testing.assert_close(data["xf"], want_flipped, atol=1e-2, rtol=1e-2)
    assert not torch.equal(data["x"], data["xf"])

    import ghns.raykit

    monkeypatch.setattr(ghns.raykit, "map_batches_pandas",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    monkeypatch.setattr(ghns.trunks.TrunkActor, "__call__",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert ensure_trunks(cfg, run, catalog, model, settings, "object", ("val",)) == folder  # read
    with pytest.raises(StageError, match="another model"):  # a reader with other frozen weights
        read_trunks(folder, "val", val["image_id"].to_numpy(), _classifier(2).trunk_digest())
    with pytest.raises(StageError, match="catalog's val images"):
        read_trunks(folder, "val", val["image_id"].to_numpy()[::-1])
    (folder / "val.pt").write_bytes(b"torn")
    with pytest.raises(StageError, match="cannot be read"):
        read_trunks(folder, "val")
    monkeypatch.undo()

    with torch.no_grad():  # other frozen weights: another folder, and the one it replaces goes
        model.backbone.blocks[0][0][0].weight.add_(0.5)
    other = ensure_trunks(cfg, run, catalog, model, settings, "object", ("val",))
    assert other != folder and other.is_dir() and not folder.exists()


@pytest.mark.slow
def test_evaluate_scores_equal_each_classifier_alone_on_the_images(run_copy):
    from ghns.evaluate import image_scores
    from ghns.train_final.train import load_image_classifier

    run = run_copy
    names = ["original", "object", "original_seed1"]
    models = {n: str(run.train_final / f"{n}.pt") for n in names}
    catalog = Catalog.read(run.catalog)
    scored = image_scores(Config(run_dir=str(run.path)), run, catalog, models, ("test",))["test"]
    rows = image_rows(run, catalog, "object")
    test = rows[rows["split"] == "test"]
    for name, path in models.items():
        model, settings = load_image_classifier(path)
        boxes = None
        if settings["crop"] == "object":
            boxes = [tuple(r) for r in test[[f"obj_{c}" for c in "xywh"]].to_numpy(dtype=float)]
        x = to_float(load_resized(test["path"].tolist(), settings["image_size"], boxes).images)
        with torch.no_grad():  # flip-averaged, as evaluate scores; trunk outputs kept in float16
            alone = model.flip_averaged_logits(x, x.flip(-1)).softmax(1).numpy()
        assert scored[name].shape == alone.shape
        np.testing.assert_allclose(scored[name], alone, atol=2e-3)
    # the seed copies start from the same frozen weights: one folder per crop
    assert sorted(p.name.split("-")[0] for p in run.trunks.iterdir()) == ["object", "whole"]


@pytest.mark.slow
def test_classifiers_with_equal_backbones_share_the_pooled_features(run_copy, monkeypatch):
    """Two classifiers that differ only in their heads (what seed-ensemble members that kept
    their probe starts are): one pooled pass per orientation, and each its own scores."""
    from ghns.checkpoint import save_checkpoint
    from ghns.evaluate import image_scores
    from ghns.train_final.train import load_image_classifier

    run = run_copy
    model, settings = load_image_classifier(run.train_final / "original.pt")
    with torch.no_grad():
        model.classify.weight.mul_(-1.0)  # another head on the same backbone
    save_checkpoint(run.path / "twin.pt", model, settings)
    models = {"original": str(run.train_final / "original.pt"), "twin": str(run.path / "twin.pt")}
    cfg, catalog = Config(run_dir=str(run.path)), Catalog.read(run.catalog)
    image_scores(cfg, run, catalog, models, ("test",))  # the trunk outputs made
    calls = []
    pooled = ImageClassifier.pooled
    monkeypatch.setattr(ImageClassifier, "pooled", lambda self, *a, **k: calls.append(1) or pooled(self, *a, **k))
    scored = image_scores(cfg, run, catalog, models, ("test",))["test"]
    assert len(calls) == 2  # the image and its mirror image, once for both classifiers
    monkeypatch.undo()
    alone = image_scores(cfg, run, catalog, {"twin": models["twin"]}, ("test",))["test"]["twin"]
    np.testing.assert_array_equal(scored["twin"], alone)
    assert not np.allclose(scored["original"], scored["twin"])
