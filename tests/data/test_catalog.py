from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ghns.data.catalog import MAX_RAISED_VAL_SHARE, Catalog, make_catalog, stratified_holdout, val_share
from ghns.errors import DataError


def rows(n_per_class=(10, 7, 1, 2)):
    out = []
    image_id = 0
    for c, n in enumerate(n_per_class):
        for _ in range(n):
            image_id += 1
            out.append({"image_id": image_id, "path": f"/x/{image_id}.jpg", "class_name": f"c{c}",
                        "split": "train"})
    return pd.DataFrame(out)


def test_holdout_is_stratified_and_keeps_one_train_image():
    df = stratified_holdout(rows(), 0.3, seed=1)
    val = df[df["split"] == "val"].groupby("class_name").size().to_dict()
    assert val == {"c0": 3, "c1": 2, "c3": 1}  # c2 has a single image: it stays in train
    assert (df[df["split"] == "train"].groupby("class_name").size() >= 1).all()


def test_holdout_depends_on_seed_not_on_row_order():
    df = rows()
    a = stratified_holdout(df, 0.3, seed=1)
    b = stratified_holdout(df.sample(frac=1.0, random_state=5), 0.3, seed=1).sort_values("image_id")
    assert a["split"].tolist() == b["split"].tolist()
    c = stratified_holdout(df, 0.3, seed=2)
    assert a["split"].tolist() != c["split"].tolist()


def test_holdout_of_one_class_ignores_the_others():
    a = stratified_holdout(rows((10, 7)), 0.3, seed=1)
    b = stratified_holdout(rows((10, 7, 1, 2)), 0.3, seed=1)
    assert a["split"].tolist() == b["split"].tolist()[:17]


def test_zero_fraction_moves_nothing():
    assert (stratified_holdout(rows(), 0.0, seed=0)["split"] == "train").all()


def test_make_catalog_labels_follow_class_list_and_drop_empty_classes():
    cat = make_catalog("x", rows((2, 2)), classes=["c1", "unused", "c0"])
    assert cat.classes == ["c1", "c0"]
    assert cat.table.groupby("class_name")["label"].first().to_dict() == {"c1": 0, "c0": 1}


def test_make_catalog_rejects_bad_rows():
    df = rows((2,))
    with pytest.raises(DataError, match="unknown split"):
        make_catalog("x", df.assign(split="dev"))
    with pytest.raises(DataError, match="image id 1 appears more than once"):
        make_catalog("x", pd.concat([df, df.iloc[:1]]))
    with pytest.raises(DataError, match="not in the class list"):
        make_catalog("x", df, classes=["other"])


def test_parquet_roundtrip_keeps_everything(tmp_path):
    df = rows((3, 2))
    df["box_x"] = np.arange(5, dtype=float)
    df["part_boxes"] = [[1.0, 2.0, 3.0, 4.0]] * 5
    cat = make_catalog("demo", df, info={"root": "/data", "skipped": {"empty": 1}})
    cat.write(tmp_path / "catalog.parquet")
    back = Catalog.read(tmp_path / "catalog.parquet")
    assert back.dataset == "demo" and back.classes == cat.classes and back.info == cat.info
    pd.testing.assert_frame_equal(back.table, cat.table)
    assert not (tmp_path / "catalog.parquet.tmp").exists()


@pytest.mark.parametrize("fraction, min_images, n_train, share", [
    (0.1, 150, 1500, 0.1),    # cub50-dev: 10% is 150 images already
    (0.1, 150, 1800, 0.1),    # more than enough
    (0.1, 150, 720, 0.21),    # flowers12: 72 -> 150 / 720 = 0.2083, rounded up
    (0.1, 150, 100, 0.25),    # a tiny dataset: raised, but never above a quarter
    (0.4, 150, 100, 0.4),     # a larger share given is kept
    (0.1, 0, 720, 0.1),       # 0 = the share as given
    (0.0, 150, 720, 0.0),     # no val carved stays none
])
def test_val_share_rises_to_hold_min_images_up_to_a_quarter(fraction, min_images, n_train, share):
    got = val_share(fraction, min_images, n_train)
    assert got == share
    if 0 < fraction and min_images and got < MAX_RAISED_VAL_SHARE:
        assert got * n_train >= min(min_images, n_train) - 1e-9  # brute force: it does hold them


def test_open_set_classes_by_the_crc32_rule_and_their_images_held_out():
    import zlib

    from ghns.data.catalog import hold_out_classes, open_set_classes

    names = [f"{i:03d}.Species_{i}" for i in range(12)]
    by_crc = sorted(names, key=lambda n: zlib.crc32(n.encode()))
    assert open_set_classes(names, 3) == by_crc[:3]
    assert open_set_classes(list(reversed(names)), 3) == by_crc[:3]  # order of the input is no matter
    assert open_set_classes(names, 5)[:3] == open_set_classes(names, 3)  # nested
    assert open_set_classes(names, 0) == []
    with pytest.raises(DataError, match="fewer than 2"):
        open_set_classes(names, 11)
    rows = pd.DataFrame({"image_id": range(48), "path": [f"/d/{i}.jpg" for i in range(48)],
                         "class_name": [names[i % 12] for i in range(48)],
                         "split": ["train", "test"] * 24})
    kept, classes, entry = hold_out_classes(rows, names, 3)
    held = set(by_crc[:3])
    assert not set(kept["class_name"]) & held and len(kept) == 36
    assert classes == [c for c in names if c not in held]
    assert entry is not None and entry["classes"] == by_crc[:3] and len(entry["images"]) == 12
    assert {r["class_name"] for r in entry["images"]} == held
    same, cls, none = hold_out_classes(rows, None, 0)
    assert same is rows and cls is None and none is None
