"""Which replacement parts make near misses rather than false negatives (pure numpy).

Nearest-first replacement picks, for a reference of class A, the other-class part most similar to
A's own. Where classes share part variants (two bird species with the same head), that part is
the same variant, and the set it makes looks exactly like A: a false negative, not a near miss.
Two rules, both reading part embeddings and class labels only (never part ground truth):

* **Donor classes.** Part k of A is replaced only by parts of the ``m`` classes that look most
  like A on the *other* parts and least like it on part k: the score of class B is the smallest
  similarity of B's and A's class centroids over the kept parts, minus their similarity on part
  k, and must be positive. A set made that way matches A everywhere but in one part that really differs: a near miss
  (for birds: an oriole with another oriole's head). This is the issue's "prefer donor classes
  that the stage-1 part networks confuse with A on the other parts".
* **The band.** Within the donors, replacements that sit *inside A's own spread* for part k
  (more similar to the reference's part than ``quantile`` of the similarities between two of A's
  own training images) are skipped, and the nearest of the rest is taken first (semi-hard, after
  FaceNet's negatives that are farther than the positive but still close).
"""

from __future__ import annotations

import numpy as np

OFF = 1.0  # band_quantile at which no band is applied (the paper's nearest-first order)


def own_spread(part_embeddings: np.ndarray, labels: np.ndarray, n_classes: int,
               quantile: float) -> np.ndarray:
    """Per class, the ``quantile`` of cosine similarities between the part embeddings of two
    distinct training images of that class (unit vectors; inner products). ``+inf`` where a class
    has fewer than two images, and for every class when ``quantile`` is ``OFF``."""
    out = np.full(n_classes, np.inf)
    if quantile >= OFF:
        return out
    x = np.asarray(part_embeddings, dtype=np.float64)
    for c in range(n_classes):
        members = x[labels == c]
        if len(members) < 2:
            continue
        sims = members @ members.T
        pairs = sims[np.triu_indices(len(members), k=1)]
        out[c] = float(np.quantile(pairs, quantile))
    return out


def replacement_limits(spread: np.ndarray, target: int, max_similarity: float) -> float:
    """The highest similarity a replacement part may have to the part it replaces, for references
    of class ``target``: the band's edge, or the absolute ``max_similarity`` if that is lower."""
    return float(min(spread[target], max_similarity))


def class_centroids(embeddings: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(P, C, D) unit-length mean part embedding of every class (zeros for a class without
    images)."""
    x = np.asarray(embeddings, dtype=np.float64)
    out = np.zeros((x.shape[1], n_classes, x.shape[2]))
    for c in range(n_classes):
        members = x[labels == c]
        if len(members):
            out[:, c] = members.mean(axis=0)
    norms = np.linalg.norm(out, axis=2, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


def donor_scores(centroids: np.ndarray, target: int, part: int) -> np.ndarray:
    """Per class B: min over the kept parts j of cos(c_j(A), c_j(B)) minus cos(c_k(A), c_k(B))
    for replacing part k = ``part`` of class A = ``target``; ``-inf`` for A itself and for
    classes without images."""
    sims = np.einsum("pcd,pd->pc", centroids, centroids[:, target])  # (P, C)
    kept = [j for j in range(centroids.shape[0]) if j != part]
    score = (sims[kept].min(axis=0) if kept else np.zeros(sims.shape[1])) - sims[part]
    score[target] = -np.inf
    score[~np.any(centroids[part] != 0, axis=1)] = -np.inf
    return score


def donor_classes(centroids: np.ndarray, target: int, part: int, m: int) -> np.ndarray | None:
    """The ``m`` best donor classes for replacing part ``part`` of class ``target`` (highest
    score first, ties to the lower class id), among those with a positive score: a donor must be
    closer to A on every kept part than on the part it replaces, or the swap does not change
    what distinguishes it. None when ``m`` is 0 (every other class)."""
    if m <= 0:
        return None
    score = donor_scores(centroids, target, part)
    order = np.lexsort((np.arange(len(score)), -score))
    order = order[score[order] > 0]  # closer to A on every kept part than on the replaced one
    return np.sort(order[:m])


class Replacements:
    """The replacement lists of every class, by the rules above: per part, the ``k`` nearest
    donor-class parts outside the class's own spread (and below ``max_similarity``), from a
    FAISS nearest-part index (``ghns.stage2.neighbours.PartNeighbours``) built once."""

    def __init__(self, index, embeddings: np.ndarray, labels: np.ndarray, n_classes: int,
                 k: int, max_similarity: float = 1.0, band_quantile: float = OFF,
                 donors: int = 0) -> None:
        self.index, self.labels, self.k = index, labels, k
        self.max_similarity, self.donors = max_similarity, donors
        parts = embeddings.shape[1]
        self.spread = [own_spread(embeddings[:, p], labels, n_classes, band_quantile) for p in range(parts)]
        self.centroids = class_centroids(embeddings, labels, n_classes) if donors > 0 else None
        self.parts = parts

    def lists(self, target: int, refs: np.ndarray) -> list[np.ndarray]:
        """Per part, (len(refs), k) replacement source indices for class ``target``'s references
        (nearest first, -1 padded): the ``neighbours`` argument of ``fill_class``."""
        out = []
        for part in range(self.parts):
            allowed = None
            if self.centroids is not None:
                chosen = donor_classes(self.centroids, target, part, self.donors)
                allowed = np.nonzero(np.isin(self.labels, chosen))[0]
            limit = replacement_limits(self.spread[part], target, self.max_similarity)
            out.append(self.index.search(refs, part, self.k, limit, allowed))
        return out
