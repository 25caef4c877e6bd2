from __future__ import annotations

import itertools
import math

import numpy as np

from ghns.localize.metrics import fit_assignment, hit_matrix, object_iou50, part_center_hit

NAN = (math.nan,) * 4


def test_object_iou50_counts_images_over_half():
    truth = [(0, 0, 10, 10)] * 3 + [NAN]
    pred = [(0, 0, 10, 10), (5, 0, 10, 10), (1, 1, 9, 9), (0, 0, 1, 1)]
    assert object_iou50(pred, truth) == 2 / 3  # the NaN truth is left out


def test_assignment_recovers_a_permutation_brute_force():
    rng = np.random.default_rng(0)
    truth = []
    for _ in range(20):
        x = rng.uniform(0, 50, 3)
        truth.append([(float(x[j]) + 100 * j, 0.0, 10.0, 10.0) for j in range(3)])
    perm = (2, 0, 1)  # learned part perm[j] sits on true part j
    centres = np.zeros((20, 3, 2))
    for i, boxes in enumerate(truth):
        for j, (x, y, w, h) in enumerate(boxes):
            centres[i, perm[j]] = (x + w / 2, y + h / 2)
    centres[0, perm[1]] = (-5, -5)  # one miss
    hits = hit_matrix(centres, truth)
    # brute force over every assignment agrees with fit_assignment
    best = max(itertools.permutations(range(3)), key=lambda a: sum(hits[a[j], j] for j in range(3)))
    assert fit_assignment(hits) == best == perm
    assert part_center_hit(centres, truth, perm) == [1.0, 19 / 20, 1.0]


def test_missing_true_parts_are_left_out():
    truth = [[(0, 0, 10, 10), NAN, (20, 0, 10, 10)], [(0, 0, 10, 10), (10, 0, 5, 5), NAN]]
    centres = np.array([[[5, 5], [0, 0], [25, 5]], [[5, 5], [12, 2], [0, 0]]], dtype=float)
    assert part_center_hit(centres, truth, (0, 1, 2)) == [1.0, 1.0, 1.0]
