from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from ghns.config import Config
from ghns.data import build_catalog
from ghns.data.synthetic import (PART_NAMES, VARIANTS, SyntheticSpec, class_attributes, class_name,
                                 image_rng, one_part_pairs, part_difference, render_dataset,
                                 render_image)


def test_same_seed_same_pixels_and_boxes():
    a = render_image((1, 2, 3), 64, image_rng(7, 3, 5))
    b = render_image((1, 2, 3), 64, image_rng(7, 3, 5))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.object_box == b.object_box and a.part_boxes == b.part_boxes
    c = render_image((1, 2, 3), 64, image_rng(8, 3, 5))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_rendered_folder_is_deterministic_and_reused(tmp_path):
    spec = SyntheticSpec(classes=3, per_class=4, image_size=48, seed=1)
    ann1 = render_dataset(tmp_path / "a", spec, progress=False)
    ann2 = render_dataset(tmp_path / "b", spec, progress=False)
    import pyarrow.parquet as pq
    t1, t2 = pq.read_table(ann1).to_pandas(), pq.read_table(ann2).to_pandas()
    assert t1.drop(columns="part_boxes").equals(t2.drop(columns="part_boxes"))
    assert t1["part_boxes"].map(list).tolist() == t2["part_boxes"].map(list).tolist()
    for rel in t1["path"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    mtime = ann1.stat().st_mtime_ns
    assert render_dataset(tmp_path / "a", spec, progress=False) == ann1
    assert ann1.stat().st_mtime_ns == mtime  # reused, not re-rendered


def test_boxes_are_inside_the_image_and_parts_inside_the_object():
    for i in range(30):
        attrs = class_attributes(20)[i % 20]
        out = render_image(attrs, 96, image_rng(0, i % 20, i))
        ox, oy, ow, oh = out.object_box
        assert 0 <= ox and 0 <= oy and ox + ow <= 96 + 1e-6 and oy + oh <= 96 + 1e-6
        assert ow > 20 and oh > 8
        for x, y, w, h in out.part_boxes:
            assert w > 1 and h > 1
            assert ox - 1e-6 <= x and oy - 1e-6 <= y
            assert x + w <= ox + ow + 1e-6 and y + h <= oy + oh + 1e-6


def test_classes_differ_in_single_parts():
    attrs = class_attributes(20)
    assert len(set(attrs)) == 20
    per_part = one_part_pairs(attrs)
    # brute force: count pairs differing in exactly one part, by that part
    brute = [0, 0, 0]
    for a, b in itertools.combinations(attrs, 2):
        if part_difference(a, b) == 1:
            brute[[x != y for x, y in zip(a, b)].index(True)] += 1
    assert per_part == brute
    assert min(per_part) >= 10  # every part is the only difference of many class pairs
    for a in attrs:  # every class has a near miss: another class one part away
        assert any(part_difference(a, b) == 1 for b in attrs if b != a)
    assert class_attributes(8) == attrs[:8]


def test_class_names_are_unique_and_readable():
    names = [class_name(a) for a in class_attributes(64)]
    assert len(set(names)) == 64
    assert names[0] == f"{VARIANTS[0][0]}-{VARIANTS[1][0]}-{VARIANTS[2][0]}"


def test_catalog_has_ground_truth_boxes(tmp_path):
    cfg = Config(dataset="synthetic", root=str(tmp_path), synthetic_classes=4,
                 synthetic_per_class=8, synthetic_image_size=48)
    catalog = build_catalog(cfg, progress=False)
    t = catalog.table
    assert len(catalog.classes) == 4 and len(t) == 32
    assert (catalog.counts()["test"] == 2).all()
    assert t["part_boxes"].map(len).eq(12).all()
    assert t[["box_x", "box_y", "box_w", "box_h"]].notna().all().all()
    assert catalog.info["part_names"] == list(PART_NAMES)
    assert Image.open(t["path"].iloc[0]).size == (48, 48)


def test_too_many_classes_is_refused():
    with pytest.raises(ValueError, match="1..64"):
        class_attributes(65)


def test_near_misses_are_no_class_and_one_part_from_their_source(tmp_path):
    from ghns.data.synthetic import near_miss_attributes, render_near_misses

    classes = class_attributes(20)
    pool = near_miss_attributes(classes)
    assert pool and len(set(t for t, _, _ in pool)) > 20
    for triple, source, part in pool:
        assert triple not in classes
        diff = [a != b for a, b in zip(triple, classes[source])]
        assert diff == [k == part for k in range(3)]
    spec = SyntheticSpec(classes=20, per_class=4, image_size=48, seed=0)
    first = render_near_misses(tmp_path, spec, 12, progress=False)
    names = {class_name(a) for a in classes}
    assert len(first) == 12 and not set(first["class_name"]) & names
    assert set(first["changed_part"]) <= set(PART_NAMES)
    again = render_near_misses(tmp_path, spec, 12, progress=False)  # reused, same files
    assert again["path"].tolist() == first["path"].tolist()
    other = render_near_misses(tmp_path / "b", spec, 12, progress=False)  # rendered anew: same pixels
    for a, b in zip(first["path"], other["path"]):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_the_synthetic_catalog_names_its_near_misses_and_trains_on_none(tmp_path):
    cfg = Config(root=str(tmp_path), synthetic_classes=4, synthetic_per_class=8, synthetic_image_size=48,
                 synthetic_near_misses=10, verify_images="header")
    catalog = build_catalog(cfg, progress=False)
    near = catalog.info["unknown"]["near_miss"]["images"]
    assert len(near) == 10
    assert not {r["path"] for r in near} & set(catalog.table["path"])
    assert not {r["class_name"] for r in near} & set(catalog.classes)
    none = build_catalog(Config(root=str(tmp_path), synthetic_classes=4, synthetic_per_class=8,
                                synthetic_image_size=48, synthetic_near_misses=0, verify_images="header"),
                         progress=False)
    assert "unknown" not in none.info and none.table.equals(catalog.table)
