from __future__ import annotations

import shutil

import pytest

from ghns.config import Config
from ghns.data import build_catalog
from ghns.data.imagefolder import read_imagefolder
from ghns.errors import DataError
from tests.conftest import write_image


def make_tree(root, splits=("train", "test"), classes=("daisy", "iris", "lily"), n=5):
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            for k in range(n):
                write_image(root / split / name / f"img_{k}.jpg", seed=100 * s + 10 * c + k)
    return root


def test_train_test_layout(tmp_path):
    make_tree(tmp_path)
    catalog = build_catalog(Config(dataset="imagefolder", root=str(tmp_path), val_fraction=0.2),
                            progress=False)
    counts = catalog.counts()
    assert catalog.classes == ["daisy", "iris", "lily"]
    assert counts["train"].tolist() == [4, 4, 4] and counts["val"].tolist() == [1, 1, 1]
    assert counts["test"].tolist() == [5, 5, 5]


def test_own_val_folder_is_kept(tmp_path):
    make_tree(tmp_path, splits=("train", "val", "test"), n=3)
    catalog = build_catalog(Config(dataset="imagefolder", root=str(tmp_path)), progress=False)
    assert catalog.counts()["val"].tolist() == [3, 3, 3]
    assert "own validation" in catalog.info["val"]


def test_one_folder_split_is_seeded_and_stratified(tmp_path):
    for c, name in enumerate(("a", "b")):
        for k in range(8):
            write_image(tmp_path / name / f"{k}.png", seed=10 * c + k)
    rows1 = read_imagefolder(tmp_path, Config(test_fraction=0.25)).rows
    rows2 = read_imagefolder(tmp_path, Config(test_fraction=0.25)).rows
    assert rows1.equals(rows2)
    assert rows1.groupby("class_name")["split"].apply(lambda s: (s == "test").sum()).tolist() == [2, 2]


def test_test_class_missing_from_train_is_an_error(tmp_path):
    make_tree(tmp_path)
    write_image(tmp_path / "test" / "tulip" / "x.jpg")
    with pytest.raises(DataError, match="not in train/: \\['tulip'\\]"):
        read_imagefolder(tmp_path)


def test_train_without_test_is_an_error(tmp_path):
    make_tree(tmp_path, splits=("train",))
    with pytest.raises(DataError, match="no test/ folder"):
        read_imagefolder(tmp_path)


def test_duplicate_files_are_reported(tmp_path):
    make_tree(tmp_path)
    shutil.copy(tmp_path / "train" / "iris" / "img_0.jpg", tmp_path / "test" / "iris" / "dup.jpg")
    catalog = build_catalog(Config(dataset="imagefolder", root=str(tmp_path)), progress=False)
    assert len(catalog.info["duplicate_groups"]) == 1
    assert catalog.info["duplicates_across_splits"] == 1


@pytest.mark.shared_data
def test_shared_flowers12(shared_data):
    catalog = build_catalog(Config(dataset="imagefolder", root=str(shared_data / "flowers12")),
                            progress=False)
    counts = catalog.counts()
    assert len(catalog.classes) == 12
    assert (counts["test"] == 20).all()
    # 720 train images: 10% would be 72 val images, so the share rises to 0.21 (13 of 60 per class)
    assert (counts["train"] + counts["val"] == 60).all() and (counts["val"] == 13).all()
    assert "0.21 per class (--val-fraction 0.1 raised to hold at least 150 images)" in catalog.info["val"]
    assert len(catalog.info["duplicate_groups"]) == 1  # the byte-identical pair docs/running.md names


def test_a_small_dataset_gets_a_val_split_of_at_least_min_val_images(tmp_path):
    make_tree(tmp_path, splits=("train", "test"), n=20)  # 3 classes x 20 train images
    counts = build_catalog(Config(dataset="imagefolder", root=str(tmp_path), min_val_images=12),
                           progress=False).counts()
    assert counts["val"].tolist() == [4, 4, 4]  # 10% = 6 images -> share 0.2 -> 12
    counts = build_catalog(Config(dataset="imagefolder", root=str(tmp_path), min_val_images=0),
                           progress=False).counts()
    assert counts["val"].tolist() == [2, 2, 2]  # --val-fraction as given


def test_a_symlink_loop_counts_each_real_image_once_under_its_own_class(tmp_path):
    import os

    make_tree(tmp_path, n=4)
    os.symlink("..", tmp_path / "train" / "daisy" / "loop")  # daisy/loop/iris/... would be iris as daisy
    os.symlink(tmp_path / "train" / "iris" / "img_0.jpg", tmp_path / "train" / "lily" / "extra.jpg")
    catalog = build_catalog(Config(dataset="imagefolder", root=str(tmp_path), min_val_images=0,
                                   val_fraction=0.25), progress=False)
    rows = catalog.table
    assert len(rows) == 24  # 3 classes x 4 images x 2 splits, each once
    for path, name in zip(rows["path"], rows["class_name"]):
        assert os.path.realpath(path).split(os.sep)[-2] == name  # never another class's image
    assert rows["path"].map(os.path.realpath).is_unique
    assert catalog.info["skipped"]["symlink loop or repeat"] >= 2


def test_a_name_that_is_not_utf8_is_skipped_and_counted(tmp_path):
    import os

    make_tree(tmp_path, n=4)
    bad = os.path.join(os.fsencode(tmp_path / "train" / "daisy"), b"caf\xe9.jpg")
    shutil.copyfile(tmp_path / "train" / "daisy" / "img_0.jpg", bad)
    os.makedirs(os.path.join(os.fsencode(tmp_path / "test"), b"\xffclass"))
    catalog = build_catalog(Config(dataset="imagefolder", root=str(tmp_path), min_val_images=0,
                                   val_fraction=0.25), progress=False)
    assert len(catalog.table) == 24 and catalog.classes == ["daisy", "iris", "lily"]
    assert catalog.info["skipped"]["undecodable name"] == 2
