"""``ghns.rejection``: which images are scored, the threshold, the figures (pure parts)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ghns.data.catalog import make_catalog
from ghns.rejection import confidence, image_sets, reject_threshold, rejection_figures, unknown_sets
from ghns.stats import auroc


def catalog_with_unknowns():
    rows = pd.DataFrame({"image_id": range(8), "path": [f"/k/{i}.png" for i in range(8)],
                         "class_name": ["a", "b"] * 4, "split": ["train", "val", "test", "test"] * 2})
    info = {"unknown": {
        "near_miss": {"rule": "r", "images": [{"path": f"/n/{i}.png", "class_name": "x", "split": s}
                                              for i, s in enumerate(["val", "test", "val", "test", "test"])]},
        "open_set": {"rule": "r", "classes": ["c"], "images": [{"path": "/o/0.png", "class_name": "c"}]}}}
    return make_catalog("t", rows, info=info)


def test_image_sets_split_unknowns_into_val_and_test():
    catalog = catalog_with_unknowns()
    sets = unknown_sets(catalog)
    assert list(sets) == ["near_miss", "open_set"]
    assert sets["open_set"]["split"].tolist() == ["test"]  # entries written without a split: test
    paths = image_sets(catalog)
    assert paths["known"] == catalog.split("test")["path"].tolist()
    assert paths["known_val"] == catalog.split("val")["path"].tolist()
    assert paths["near_miss"] == ["/n/1.png", "/n/3.png", "/n/4.png"]
    assert paths["near_miss_val"] == ["/n/0.png", "/n/2.png"]
    assert paths["open_set"] == ["/o/0.png"] and paths["open_set_val"] == []
    assert unknown_sets(make_catalog("t", catalog.table.drop(columns=["label"]))) == {}


def test_reject_threshold_lets_the_chosen_share_of_known_val_through():
    rng = np.random.default_rng(0)
    val = rng.random(200)
    t = reject_threshold(val, 0.95)
    assert t in val and (val >= t).mean() >= 0.95  # the threshold is one of the val scores
    assert (val >= np.min(val[val > t])).mean() < 0.95  # the next one up would let fewer through
    assert reject_threshold(np.array([]), 0.95) == 0.0


def test_rejection_figures_are_the_aurocs_of_maximum_softmax_scores():
    rng = np.random.default_rng(1)
    scores = {name: rng.dirichlet(np.ones(4) * a, n) for name, a, n in
              (("known", 0.3, 30), ("known_val", 0.3, 20), ("near_miss", 2.0, 10), ("near_miss_val", 2.0, 8))}
    conf = {name: {"parts": confidence(s), "fused": confidence(s[:, ::-1] ** 2)} for name, s in scores.items()}
    fig = rejection_figures(conf)
    assert list(fig) == ["near_miss"]
    assert fig["near_miss"]["images"] == 10 and fig["near_miss"]["known_images"] == 30
    assert fig["near_miss"]["auroc"]["parts"] == round(auroc(scores["known"].max(1), scores["near_miss"].max(1)), 4)
    assert fig["near_miss"]["val_auroc"]["parts"] == round(
        auroc(scores["known_val"].max(1), scores["near_miss_val"].max(1)), 4)
    assert fig["near_miss"]["auroc"]["parts"] > 0.5  # peaked known scores, flat unknown ones
