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

from ghns.generate.neighbours import nearest
from ghns.generate.pool import ArrayPool, centroids_of

OFF = 1.0  # band_quantile at which no band is applied (the paper's nearest-first order)


def own_spread(part_embeddings: np.ndarray, labels: np.ndarray, n_classes: int,
               quantile: float) -> np.ndarray:
    """Per class, ``class_spread`` of its images' part embeddings (an array over classes)."""
    labels = np.asarray(labels)
    return np.array([class_spread(part_embeddings[labels == c], quantile) for c in range(n_classes)])


def class_spread(members: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of cosine similarities between the part embeddings (rows of ``members``,
    unit vectors) of two distinct training images of one class. ``+inf`` for fewer than two
    images, and whenever ``quantile`` is ``OFF``."""
    if quantile >= OFF or len(members) < 2:
        return np.inf
    x = np.asarray(members, dtype=np.float64)
    sims = x @ x.T
    return float(np.quantile(sims[np.triu_indices(len(x), k=1)], quantile))


def class_centroids(embeddings: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(P, C, D) unit-length mean part embedding of every class (zeros for a class without
    images)."""
    return centroids_of(ArrayPool(embeddings, labels, n_classes))


def centroid_similarities(centroids: np.ndarray, target: int) -> np.ndarray:
    """(P, C): per part, the cosine similarity of every class's centroid to class ``target``'s."""
    return np.stack([centroids[p] @ centroids[p, target] for p in range(centroids.shape[0])])


def donor_scores(centroids: np.ndarray, target: int, part: int,
                 sims: np.ndarray | None = None, present: np.ndarray | None = None) -> np.ndarray:
    """Per class B: min over the kept parts j of cos(c_j(A), c_j(B)) minus cos(c_k(A), c_k(B))
    for replacing part k = ``part`` of class A = ``target``; ``-inf`` for A itself and for
    classes without images. ``sims``: ``centroid_similarities(centroids, target)``, and
    ``present``: ``classes_present(centroids)``, if known."""
    sims = centroid_similarities(centroids, target) if sims is None else sims
    kept = [j for j in range(centroids.shape[0]) if j != part]
    score = (sims[kept].min(axis=0) if kept else np.zeros(sims.shape[1])) - sims[part]
    score[target] = -np.inf
    present = classes_present(centroids) if present is None else present
    score[~present[part]] = -np.inf
    return score


def classes_present(centroids: np.ndarray) -> np.ndarray:
    """(P, C): whether a class has a centroid (images) for each part."""
    return np.any(centroids != 0, axis=2)


def donor_classes(centroids: np.ndarray, target: int, part: int, m: int,
                  sims: np.ndarray | None = None, present: np.ndarray | None = None) -> np.ndarray | None:
    """The ``m`` best donor classes for replacing part ``part`` of class ``target`` (highest
    score first, ties to the lower class id), among those with a positive score: a donor must be
    closer to A on every kept part than on the part it replaces, or the swap does not change
    what distinguishes it. None when ``m`` is 0 (every other class)."""
    if m <= 0:
        return None
    from ghns.generate.generate import top_indices

    score = donor_scores(centroids, target, part, sims, present)
    order = top_indices(score, m)
    return np.sort(order[score[order] > 0])  # closer to A on every kept part than on the replaced one


class Replacements:
    """The replacement lists of one class at a time, by the rules above, from a pool of part
    embeddings (``ghns.generate.pool``): per part, the ``k`` nearest donor-class parts outside the
    class's own spread (and below ``max_similarity``). With donors, the search is exact over the
    donors' images (``nearest``) and reads nothing else; without (``donors`` 0, the paper's every
    other class), it goes through ``index`` (``PartNeighbours`` over the whole pool). Memory: the
    class centroids (P x C x D) and whatever the pool caches, nothing of size images x classes."""

    def __init__(self, pool, k: int, max_similarity: float = 1.0, band_quantile: float = OFF,
                 donors: int = 0, index=None, centroids: np.ndarray | None = None) -> None:
        self.pool, self.k = pool, k
        self.max_similarity, self.band_quantile, self.donors = max_similarity, band_quantile, donors
        self.centroids: np.ndarray | None
        if donors > 0:
            self.centroids = centroids if centroids is not None else centroids_of(pool)
            self.present = classes_present(self.centroids)
        else:
            if index is None:
                raise ValueError("without donor classes the replacements need a part index")
            self.centroids = None
        self.index = index

    def lists(self, target: int, refs: np.ndarray) -> list[np.ndarray]:
        """Per part, (len(refs), k) replacement rows for class ``target``'s references (rows of
        the pool; nearest first, -1 padded): the ``neighbours`` argument of ``fill_class``."""
        refs = np.asarray(refs, dtype=np.int64)
        own = self.pool.take(refs)
        members = self.pool.class_block(target)
        sims = centroid_similarities(self.centroids, target) if self.centroids is not None else None
        out = []
        for part in range(self.pool.parts):
            spread = class_spread(members[:, part], self.band_quantile)
            limits = np.full(len(refs), min(spread, self.max_similarity))
            if self.centroids is None:
                out.append(self.index.search(refs, part, self.k, limits))
                continue
            chosen = donor_classes(self.centroids, target, part, self.donors, sims, self.present)
            assert chosen is not None  # donors > 0 here (centroids exist only then)
            rows = np.concatenate([self.pool.class_rows(int(c)) for c in chosen]) if len(chosen) else \
                np.zeros(0, np.int64)
            pool = self.pool.take_part(rows, part)
            out.append(nearest(own[:, part], pool, rows, self.k, limits))
        return out
