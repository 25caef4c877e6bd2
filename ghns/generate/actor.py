"""The FilterNet actor of Ray Data: opens the class-sorted embedding store, the class centroids
(donor rule) or the shared part index (every-class rule) and FilterNet once per actor; batches of
class ids in, one bank shard per class written, statistics out (with the actor's peak RSS so
far). An actor reads the embeddings of
the classes it is given and of their donors, never the whole train split."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ghns.generate.bank import write_shard
from ghns.generate.generate import fill_class
from ghns.generate.pool import PartStore
from ghns.generate.replacements import Replacements
from ghns.generate.scoring import make_scorer

CENTROIDS = "centroids.npy"


class GenerateActor:
    def __init__(self, store_path: str, filternet_path: str, out_dir: str, per_class: int,
                 tau: float, neighbors: int, max_similarity: float = 1.0, threads: int = 1,
                 use_gpu: bool = False, band_quantile: float = 1.0, temperature: float = 1.0,
                 donors: int = 0) -> None:
        from ghns.train_parts.stage import load_filternet_file
        from ghns.generate.neighbours import PartNeighbours

        try:
            import faiss

            faiss.omp_set_num_threads(threads)
        except ImportError:
            pass
        store_dir = Path(store_path)
        self.store = PartStore(store_dir)
        self.scorer = make_scorer(load_filternet_file(Path(filternet_path)), self.store, temperature)
        if donors > 0:
            index, centroids = None, np.load(store_dir / CENTROIDS)
        else:
            index, centroids = PartNeighbours.read(store_dir, self.store, use_gpu), None
        self.replacements = Replacements(self.store, neighbors, max_similarity, band_quantile, donors,
                                         index=index, centroids=centroids)
        self.out_dir = Path(out_dir)
        self.per_class, self.tau, self.k = per_class, tau, neighbors

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = [{"_order": order, **self.one_class(int(target))}
                for order, target in zip(batch["_order"], batch["class"])]
        return pd.DataFrame(rows)

    def one_class(self, target: int) -> dict:
        start = time.perf_counter()
        refs = self.store.class_rows(target)
        neighbours = self.replacements.lists(target, refs)
        res = fill_class(target, refs, neighbours, self.store.labels, self.scorer, self.per_class,
                         self.tau, self.k)
        stats = {"class": target, "references": len(refs), "kept": res.kept,
                 "candidates": res.candidates, "fully_scored": res.fully_scored,
                 "passed": res.passed, "shells": res.shells, "reason": res.reason(self.per_class),
                 "seconds": round(time.perf_counter() - start, 4),
                 "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        # the shard reads the rows it names only: index them locally
        rows = np.unique(np.concatenate([res.refs, res.sources.reshape(-1)]))
        local = np.searchsorted(rows, res.sources)
        write_shard(self.out_dir, target, self.store.image_ids[rows], self.store.labels[rows],
                    np.searchsorted(rows, res.refs), local, res.ranks, res.scores,
                    self.store.take(rows), stats)
        return stats
