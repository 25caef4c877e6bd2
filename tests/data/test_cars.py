from __future__ import annotations

import numpy as np
import pytest
import scipy.io as sio

from ghns.config import Config
from ghns.data import build_catalog
from ghns.errors import DataError
from tests.conftest import write_image


def _annos(rows, with_class=True):
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O")]
    dtype += [("class", "O")] if with_class else []
    dtype += [("fname", "O")]
    arr = np.zeros((len(rows),), dtype=dtype)
    for i, (fname, cls, box) in enumerate(rows):
        vals = list(box) + ([cls] if with_class else []) + [fname]
        arr[i] = tuple(vals)
    return arr


def make_cars(root, classes=("AM General Hummer SUV 2000", "Acura RL Sedan 2012"), n=3):
    """torchvision's StanfordCars layout with .mat annotation files."""
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    sio.savemat(base / "devkit" / "cars_meta.mat",
                {"class_names": np.array(list(classes), dtype=object)})
    for split, folder, mat in (("train", "cars_train", base / "devkit" / "cars_train_annos.mat"),
                               ("test", "cars_test", base / "cars_test_annos_withlabels.mat")):
        rows = []
        for c in range(len(classes)):
            for k in range(n):
                fname = f"{split}_{c}_{k}.jpg"
                write_image(base / folder / fname, seed=c * 10 + k)
                rows.append((fname, c + 1, (5, 6, 30, 25)))
        sio.savemat(mat, {"annotations": _annos(rows)})
    return base


def test_reads_torchvision_layout(tmp_path):
    make_cars(tmp_path)
    for root in (tmp_path, tmp_path / "stanford_cars"):
        catalog = build_catalog(Config(dataset="cars", root=str(root), val_fraction=0.34), progress=False)
        counts = catalog.counts()
        assert catalog.classes == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
        assert counts["test"].tolist() == [3, 3]
        assert counts["train"].tolist() == [2, 2] and counts["val"].tolist() == [1, 1]
        first = catalog.table.iloc[0]
        assert (first.box_x, first.box_y, first.box_w, first.box_h) == (4.0, 5.0, 26.0, 20.0)


def test_missing_dataset_is_clear(tmp_path):
    with pytest.raises(DataError, match="cars: Dataset not found"):
        build_catalog(Config(dataset="cars", root=str(tmp_path)), progress=False)
