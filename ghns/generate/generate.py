"""Filling one class's budget of hard negatives: pure numpy, no Ray.

Selection rule (fixed and documented): candidates are visited in shells of increasing
difficulty-to-find, most similar first:

    one part replaced, neighbour rank 0, 1, ..., K-1; then
    two parts replaced, larger neighbour rank 0, 1, ..., K-1.

Within a shell, candidates go round-robin over the class's references (each reference's first
candidate, then each one's second, ...; references in catalog order; a reference's candidates in
part order, then rank order). The first ``per_class`` candidates in this order whose FilterNet
score for the class is >= tau form the class's bank. The class stops as soon as its budget is full:
later shells are never expanded. The rule depends on nothing but the data, so 1 or N actors give
the same bank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ghns.generate.scoring import PartTables, score_candidates
from ghns.models import N_PARTS
from ghns.generate.shuffle import MASKS_TWO, shell_pairs

RIVALS = 4  # strongest rival classes of each reference, checked cheaply before a full softmax


@dataclass
class ClassResult:
    target: int
    sources: np.ndarray = field(default_factory=lambda: np.zeros((0, N_PARTS), np.int64))
    ranks: np.ndarray = field(default_factory=lambda: np.zeros((0, N_PARTS), np.int64))
    refs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    candidates: int = 0      # candidates considered (enumerated and checked)
    fully_scored: int = 0    # candidates that needed the full softmax
    passed: int = 0          # candidates with score >= tau among those considered
    shells: int = 0          # shells expanded
    exhausted: bool = False  # every shell was expanded

    @property
    def kept(self) -> int:
        return len(self.scores)

    def reason(self, per_class: int) -> str | None:
        """Why the class could not fill its budget (None when it did)."""
        if self.kept >= per_class:
            return None
        if self.candidates == 0:
            return "no candidates: no other-class neighbours"
        return (f"only {self.passed} of {self.candidates} candidates pass tau "
                f"(candidate space exhausted)")


def shells(k: int):
    """(n_replaced, rank) shells in visiting order."""
    return [(1, t) for t in range(k)] + [(2, t) for t in range(k)]


def shell_candidates(refs: np.ndarray, neighbours: list[np.ndarray], n_replaced: int,
                     rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All candidates of one shell, round-robin over references: (sources, ranks, ref of each).

    Vectorised: every reference has the same list of slots (part order, then rank-pair order);
    a slot is a candidate where its neighbours exist, and candidates are ordered by their position
    among the reference's valid slots, then by reference.
    """
    r = len(refs)
    if r == 0:
        empty = np.zeros((0, N_PARTS), np.int64)
        return empty, empty, np.zeros(0, np.int64)
    slots: list[tuple[tuple[int, ...], tuple[int, ...]]]
    if n_replaced == 1:
        slots = [((k,), (rank,)) for k in range(N_PARTS)]
    else:
        slots = [(tuple(k for k in range(N_PARTS) if mask[k]), pair)
                 for mask in MASKS_TWO for pair in shell_pairs(rank)]
    sources = np.repeat(refs[:, None, None], len(slots), axis=1).repeat(N_PARTS, axis=2)  # (R, S, 3)
    ranks = np.full((r, len(slots), N_PARTS), -1, np.int64)
    valid = np.ones((r, len(slots)), bool)
    for j, (parts, rks) in enumerate(slots):
        for part, rk in zip(parts, rks):
            nb = neighbours[part]
            src = nb[:, rk] if rk < nb.shape[1] else np.full(r, -1)
            valid[:, j] &= src >= 0
            sources[:, j, part] = src
            ranks[:, j, part] = rk
    position = np.cumsum(valid, axis=1) - 1
    rows, cols = np.nonzero(valid)
    order = np.lexsort((rows, position[rows, cols]))
    rows, cols = rows[order], cols[order]
    return sources[rows, cols], ranks[rows, cols], refs[rows].astype(np.int64)


def rivals(tables: PartTables, refs: np.ndarray, target: int, n: int = RIVALS) -> dict[int, np.ndarray]:
    """Each reference's ``n`` strongest other classes under FilterNet (its own, unshuffled set)."""
    logits = tables.logits(np.repeat(refs[:, None], N_PARTS, axis=1))
    logits[:, target] = -np.inf
    return {int(r): top_indices(row, n) for r, row in zip(refs, logits)}


def top_indices(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest values, largest first, ties to the lower index (as a stable
    sort of ``-values`` would give), in O(len) rather than a full sort."""
    if n >= len(values):
        return np.lexsort((np.arange(len(values)), -values))
    kth = np.partition(values, len(values) - n)[len(values) - n]  # the n-th largest value
    cand = np.nonzero(values >= kth)[0]  # every index tied with it too
    return cand[np.lexsort((cand, -values[cand]))][:n]


def fill_class(target: int, refs: np.ndarray, neighbours: list[np.ndarray], labels: np.ndarray,
               tables: PartTables, per_class: int, tau: float, k: int) -> ClassResult:
    """The bank of class ``target`` (see the module docstring for the selection rule).

    ``refs``: rows of the class's reference images; ``neighbours[p]``: (len(refs), k) nearest
    other-class sources of part p for each reference (-1 padded); ``tables``: ``PartTables``,
    ``OnDemandTables`` or ``DenseScorer`` (``ghns.generate.scoring``).
    """
    res = ClassResult(target)
    if per_class <= 0 or len(refs) == 0:
        return res
    tables = tables.for_class(target)
    # the table rows of the references and of the single-part shells that would fill the budget
    # if every candidate passed, in one go (rows of later shells come on demand)
    ranks_needed = min(k, -(-per_class // (len(refs) * N_PARTS)))
    tables.prefetch([np.concatenate([refs, neighbours[p][:, :ranks_needed].reshape(-1)])
                     for p in range(N_PARTS)])
    rival = rivals(tables, refs, target)
    kept_src: list[np.ndarray] = []
    kept_rank: list[np.ndarray] = []
    kept_ref: list[np.ndarray] = []
    kept_score: list[np.ndarray] = []
    for n_replaced, rank in shells(k):
        sources, ranks, ref_of = shell_candidates(refs, neighbours, n_replaced, rank)
        res.shells += 1
        if len(sources) == 0:
            continue
        replaced = np.where(ranks >= 0, labels[sources], target)  # classes the new parts come from
        competitors = np.concatenate([replaced, np.stack([rival[int(r)] for r in ref_of])], axis=1)
        keep, scores, full = score_candidates(tables, sources, target, tau, competitors)
        res.candidates += len(sources)
        res.fully_scored += full
        res.passed += int(keep.sum())
        idx = np.nonzero(keep)[0][: per_class - sum(len(s) for s in kept_score)]
        kept_src.append(sources[idx])
        kept_rank.append(ranks[idx])
        kept_ref.append(ref_of[idx])
        kept_score.append(scores[idx])
        if sum(len(s) for s in kept_score) >= per_class:
            break
    else:
        res.exhausted = True
    if kept_score:
        res.sources, res.ranks = np.concatenate(kept_src), np.concatenate(kept_rank)
        res.refs, res.scores = np.concatenate(kept_ref), np.concatenate(kept_score)
    return res


def fill_class_dense(target: int, refs: np.ndarray, neighbours: list[np.ndarray],
                     labels: np.ndarray, score_fn, per_class: int, tau: float, k: int) -> ClassResult:
    """The brute-force baseline: materialise every candidate of every shell, score them all with
    ``score_fn(sources) -> scores`` (dense FilterNet), then apply the same selection rule."""
    res = ClassResult(target)
    parts = [shell_candidates(refs, neighbours, n, r) for n, r in shells(k)] if len(refs) else []
    parts = [p for p in parts if len(p[0])]
    res.shells = len(shells(k))
    res.exhausted = True
    if not parts or per_class <= 0:
        return res
    sources = np.concatenate([p[0] for p in parts])
    ranks = np.concatenate([p[1] for p in parts])
    ref_of = np.concatenate([p[2] for p in parts])
    scores = score_fn(sources)
    keep = np.nonzero(scores >= tau)[0]
    res.candidates, res.fully_scored, res.passed = len(sources), len(sources), len(keep)
    idx = keep[:per_class]
    res.sources, res.ranks, res.refs, res.scores = sources[idx], ranks[idx], ref_of[idx], scores[idx]
    return res
