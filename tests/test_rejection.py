"""``ghns.rejection``: which images are scored, the threshold, the figures (pure parts)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

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


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_nearest_set_similarity_is_the_best_mean_part_cosine_over_train_images():
    from ghns.rejection import nearest_set_similarity

    rng = np.random.default_rng(2)
    train, queries = unit(rng.normal(size=(23, 3, 5))), unit(rng.normal(size=(7, 3, 5)))
    got = nearest_set_similarity(queries, train, chunk=3)  # chunks smaller than the queries
    for q, g in zip(queries, got):
        best = max(np.mean([q[k] @ t[k] for k in range(3)]) for t in train)
        assert g == pytest.approx(best, abs=1e-6)
    assert nearest_set_similarity(train[:4], train) == pytest.approx(np.ones(4), abs=1e-6)  # itself
    with pytest.raises(ValueError, match="N, P, D"):
        nearest_set_similarity(queries, train.reshape(23, -1))


def test_calibration_pvalues_are_shares_of_known_val_and_combined_is_their_product():
    from ghns.rejection import QUANTILES, Calibration

    rng = np.random.default_rng(3)
    fused, sim = rng.random(QUANTILES), rng.normal(size=QUANTILES)
    cal = Calibration.fit(fused, sim)
    # with exactly QUANTILES val images, each one's p-value is its rank share
    for x in (fused, sim):
        q = cal.fused if x is fused else cal.similarity
        share = np.array([(x <= v).mean() for v in x])
        assert Calibration.pvalue(q, x) == pytest.approx((share * QUANTILES - 1) / (QUANTILES - 1), abs=1e-9)
    assert Calibration.pvalue(cal.fused, np.array([-1.0, 2.0])).tolist() == [0.0, 1.0]
    probe_f, probe_s = rng.random(9), rng.normal(size=9)
    assert cal.combined(probe_f, probe_s) == pytest.approx(
        Calibration.pvalue(cal.fused, probe_f) * Calibration.pvalue(cal.similarity, probe_s))
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.combined(probe_f, probe_s) == pytest.approx(cal.combined(probe_f, probe_s), abs=1e-5)
    ties = Calibration.fit(np.ones(10), np.r_[np.zeros(5), np.ones(5)])  # repeated values: still monotone
    p = Calibration.pvalue(ties.similarity, np.array([-0.5, 0.0, 0.5, 1.0]))
    assert np.all(np.diff(p) >= 0) and p[-1] == 1.0


def test_confidences_add_similarity_and_combined_where_given():
    from ghns.fusion import Fusion
    from ghns.rejection import Calibration, confidences, nearest_set_similarity

    rng = np.random.default_rng(4)
    train = unit(rng.normal(size=(12, 3, 4)))
    inputs = {name: {"original": rng.dirichlet(np.ones(3), n), "object": rng.dirichlet(np.ones(3), n),
                     "embeddings": unit(rng.normal(size=(n, 3, 4)))}
              for name, n in (("known", 9), ("known_val", 6), ("near_miss", 5), ("near_miss_val", 4))}
    fusion = Fusion("grid", (0.2, 0.3, 0.5))
    parts = lambda _, e: np.full((len(e), 3), 1 / 3)  # noqa: E731
    plain = confidences(inputs, parts, fusion)
    assert set(plain["known"]) == {"parts", "fused"}
    cal = Calibration.fit(plain["known_val"]["fused"], nearest_set_similarity(inputs["known_val"]["embeddings"], train))
    sims = {name: nearest_set_similarity(d["embeddings"], train) for name, d in inputs.items()}
    full = confidences(inputs, parts, fusion, sims, cal)
    for name, d in full.items():
        assert d["similarity"] == pytest.approx(nearest_set_similarity(inputs[name]["embeddings"], train))
        assert d["combined"] == pytest.approx(cal.combined(d["fused"], d["similarity"]))
    fig = rejection_figures(full)["near_miss"]
    assert list(fig["auroc"]) == ["parts", "fused", "similarity", "combined"]
    assert fig["auroc"]["similarity"] == round(auroc(full["known"]["similarity"], full["near_miss"]["similarity"]), 4)
