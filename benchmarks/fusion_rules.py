"""Fusion rules side by side on one finished run's cached scores (``<run>/scores/{val,test}.npz``).

Every rule chooses on val only; test is reported at its choice. Rules (``ghns.fusion``):
``grid`` (paper Eq. 11 on the 0.05 grid, best val top-1, ties by val log-loss), ``loglinear``
(one temperature per classifier fitted on val log-loss, then the product of tempered scores: the
default of ``ghns evaluate``), and two references that choose nothing: ``equal`` (equal weights
on the scores) and ``loglinear_equal`` (the plain product). ``oracle_ceiling`` is the best grid
point *on test*, and ``oracle_ceiling_loglinear`` the best product of scores raised to grid
weights (any temperatures up to a common scale) *on test*: ceilings of what any weights could do
with these classifiers, never results.

``val_cv_top1`` is the evidence for choosing a rule without test: each rule is fitted on 4/5 of
val and scored on the other 1/5, over 5 folds x ``--repeats`` shuffles (every val image is held
out once per repeat). Last line: one JSON object.

    python benchmarks/fusion_rules.py --run-dir runs/cub
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ghns.fusion import Fusion, choose_fusion, fuse, fuse_loglinear, topk_accuracy, weight_grid

RULES = {
    "grid": lambda v, y: choose_fusion(v, y, "grid"),
    "loglinear": lambda v, y: choose_fusion(v, y, "loglinear"),
    "equal": lambda v, y: Fusion("grid", tuple([1.0 / len(v)] * len(v))),
    "loglinear_equal": lambda v, y: Fusion("loglinear", tuple([1.0] * len(v))),
}


def val_cross_validated(val: list[np.ndarray], labels: np.ndarray, rule, repeats: int,
                        folds: int = 5) -> float:
    """Top-1 (%) of ``rule`` on held-out val folds, fitted on the rest of val."""
    n, hits = len(labels), 0
    for r in range(repeats):
        order = np.random.default_rng(r).permutation(n)
        for held in np.array_split(order, folds):
            fit = np.setdiff1d(order, held)
            fusion = rule([s[fit] for s in val], labels[fit])
            hits += int((fusion([s[held] for s in val]).argmax(1) == labels[held]).sum())
    return 100.0 * hits / (n * repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--classifiers", default="original,object,parts")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    scores = Path(args.run_dir) / "scores"
    val, test = dict(np.load(scores / "val.npz")), dict(np.load(scores / "test.npz"))
    names = args.classifiers.split(",")
    yv, yt = val["label"], test["label"]
    v, t = [val[n] for n in names], [test[n] for n in names]
    out: dict = {"single": {n: round(topk_accuracy(test[n], yt), 2) for n in names}}
    for name, rule in RULES.items():
        fusion = rule(v, yv)
        out[name] = {**fusion.describe(), "val_cv_top1": round(val_cross_validated(v, yv, rule, args.repeats), 2),
                     "test_top1": round(topk_accuracy(fusion(t), yt), 2)}
    grid = list(weight_grid(len(names), 0.05))
    out["oracle_ceiling"] = round(max(topk_accuracy(fuse(t, g), yt) for g in grid), 2)
    # top-1 of softmax(sum b_i log p_i) depends only on the ratios of the b_i: the simplex covers them
    out["oracle_ceiling_loglinear"] = round(max(topk_accuracy(fuse_loglinear(t, g), yt) for g in grid), 2)
    print(json.dumps({"bench": "fusion_rules", "run_dir": args.run_dir, "classifiers": names, **out}))


if __name__ == "__main__":
    main()
