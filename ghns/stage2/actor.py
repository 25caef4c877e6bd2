"""The FilterNet actor of Ray Data: FAISS indexes, replacement rules, logit tables and FilterNet
loaded once per actor; batches of class ids in, one bank shard per class written, statistics
out."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ghns.stage2.bank import write_shard
from ghns.stage2.generate import fill_class
from ghns.stage2.neighbours import PartNeighbours
from ghns.stage2.replacements import Replacements
from ghns.stage2.scoring import make_scorer

class GenerateActor:
    def __init__(self, embeddings_path: str, filternet_path: str, out_dir: str, per_class: int,
                 tau: float, neighbors: int, max_similarity: float = 1.0, threads: int = 1,
                 use_gpu: bool = False, band_quantile: float = 1.0, temperature: float = 1.0,
                 donors: int = 0) -> None:
        from ghns.stage1.table import read_embeddings
        from ghns.stage1.stage import load_filternet_file

        try:
            import faiss

            faiss.omp_set_num_threads(threads)
        except ImportError:
            pass
        meta, emb = read_embeddings(Path(embeddings_path))
        train = (meta["split"] == "train").to_numpy()
        self.image_ids = meta["image_id"].to_numpy()[train]
        self.labels = meta["label"].to_numpy()[train]
        self.embeddings = emb[train]
        self.scorer = make_scorer(load_filternet_file(Path(filternet_path)), self.embeddings,
                                  temperature)
        n_classes = int(meta["label"].max()) + 1 if len(meta) else 0
        self.replacements = Replacements(PartNeighbours(self.embeddings, self.labels, use_gpu=use_gpu),
                                         self.embeddings, self.labels, n_classes, neighbors,
                                         max_similarity, band_quantile, donors)
        self.out_dir = Path(out_dir)
        self.per_class, self.tau, self.k = per_class, tau, neighbors

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = [{"_order": order, **self.one_class(int(target))}
                for order, target in zip(batch["_order"], batch["class"])]
        return pd.DataFrame(rows)

    def one_class(self, target: int) -> dict:
        start = time.perf_counter()
        refs = np.nonzero(self.labels == target)[0]
        neighbours = self.replacements.lists(target, refs)
        res = fill_class(target, refs, neighbours, self.labels, self.scorer, self.per_class,
                         self.tau, self.k)
        stats = {"class": target, "references": len(refs), "kept": res.kept,
                 "candidates": res.candidates, "fully_scored": res.fully_scored,
                 "passed": res.passed, "shells": res.shells, "reason": res.reason(self.per_class),
                 "seconds": round(time.perf_counter() - start, 4)}
        write_shard(self.out_dir, target, self.image_ids, self.labels, res.refs, res.sources,
                    res.ranks, res.scores, self.embeddings, stats)
        return stats
