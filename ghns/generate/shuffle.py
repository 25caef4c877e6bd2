"""The parts shuffle module (paper 3.2, the ``Sets`` definition), as index arithmetic.

A candidate for reference image r of class A keeps one or two of r's three parts and replaces the
others with the same part of images of other classes. In the paper's class patterns (P, Q, R) of
a set, that is every pattern of ``Sets`` (P=Q!=R, P!=Q=R, P=R!=Q, all distinct) that keeps a part
of the reference: one part replaced (A, A, B), or two replaced by one other class (A, B, B) or by
two (A, B, C), in every position.

Candidates are arrays, never objects: ``sources`` (M, 3) holds, per part, the image index the
part comes from (r itself where kept), and ``ranks`` (M, 3) the neighbour rank of each replaced
part (-1 where kept), from which the priority order is derived (``ghns.generate.generate``).
"""

from __future__ import annotations

import itertools

import numpy as np

# replaced-part masks: one part, then two parts
MASKS_ONE = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
MASKS_TWO = [(1, 1, 0), (1, 0, 1), (0, 1, 1)]


def shell_pairs(shell: int) -> list[tuple[int, int]]:
    """Rank pairs with max == shell, by (sum, a): (0, s), (s, 0), (1, s), (s, 1), ..., (s, s)."""
    pairs = [(a, shell) for a in range(shell)] + [(shell, b) for b in range(shell)] + [(shell, shell)]
    return sorted(pairs, key=lambda p: (p[0] + p[1], p[0]))


def full_space(ref: int, labels: np.ndarray) -> set[tuple[int, ...]]:
    """Every candidate of ``ref`` when all other-class images are sources (no neighbour limit):
    the set of source triples. Used as the reference enumeration in tests and small problems."""
    others = np.nonzero(labels != labels[ref])[0].tolist()
    out: set[tuple[int, ...]] = set()
    for mask in MASKS_ONE + MASKS_TWO:
        choices = [others if m else [ref] for m in mask]
        out.update(itertools.product(*choices))
    return out
