from __future__ import annotations

import math

import numpy as np
import pytest

from ghns.localize.boxes import box_around, box_from_map, contains, iou, mass_centre


def test_single_blob_gives_its_exact_box():
    heat = np.zeros((10, 12))
    heat[2:5, 3:9] = 1.0
    assert box_from_map(heat, 0.5) == ((3.0, 2.0, 6.0, 3.0), False)


def test_map_cells_scale_to_image_pixels():
    heat = np.zeros((4, 4))
    heat[1, 2] = 2.0
    box, flat = box_from_map(heat, 0.5, size=(40, 80))  # H=40, W=80: cells are 10 x 20 px
    assert box == (40.0, 10.0, 20.0, 10.0) and not flat


def test_largest_region_versus_union():
    heat = np.zeros((10, 10))
    heat[0:2, 0:2] = 1.0   # small blob, the maximum
    heat[5:9, 4:9] = 0.8   # larger blob above threshold
    assert box_from_map(heat, 0.5, mode="largest")[0] == (4.0, 5.0, 5.0, 4.0)
    assert box_from_map(heat, 0.5, mode="union")[0] == (0.0, 0.0, 9.0, 9.0)
    assert box_from_map(heat, 0.9, mode="largest")[0] == (0.0, 0.0, 2.0, 2.0)  # only the max blob


def test_diagonal_cells_are_one_region():
    heat = np.zeros((5, 5))
    heat[1, 1] = heat[2, 2] = heat[3, 3] = 1.0
    assert box_from_map(heat, 0.5)[0] == (1.0, 1.0, 3.0, 3.0)


@pytest.mark.parametrize("heat", [np.zeros((6, 6)), np.full((6, 6), 3.0), -np.ones((6, 6)),
                                  np.full((6, 6), np.nan)])
def test_empty_flat_or_negative_maps_still_give_a_box_and_say_so(heat):
    box, degenerate = box_from_map(heat, 0.2, size=(30, 60))
    assert degenerate and box == (0.0, 0.0, 60.0, 30.0)


def test_mass_centre_is_exact():
    w = np.zeros((4, 4))
    w[1, 1] = 1.0
    w[1, 3] = 3.0
    assert mass_centre(w) == (3.0, 1.5)  # cell centres at x = 1.5 and 3.5, weighted 1:3
    assert mass_centre(w, size=(40, 40)) == (30.0, 15.0)
    assert mass_centre(np.zeros((4, 4)), size=(10, 20)) == (10.0, 5.0)


def test_box_around_stays_inside_the_image():
    assert box_around((50, 50), 20, (100, 100)) == (40.0, 40.0, 20.0, 20.0)
    assert box_around((2, 98), 20, (100, 100)) == (0.0, 80.0, 20.0, 20.0)
    assert box_around((10, 10), 200, (50, 80)) == (0.0, 0.0, 80.0, 50.0)


def test_iou_and_contains():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 1, 1), (5, 5, 1, 1)) == 0.0
    assert contains((0, 0, 10, 10), (10, 0)) and not contains((0, 0, 10, 10), (10.1, 5))
    assert not contains((math.nan,) * 4, (1, 1))
