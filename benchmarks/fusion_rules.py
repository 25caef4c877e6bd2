"""Fusion rules side by side on one finished run's cached scores (``<run>/scores/{val,test}.npz``).

Every rule chooses on val only; test is reported at its choice. Rules: ``val_grid`` (Eq. 11 on
the 0.05 grid, best val top-1, ties by val log-loss: what ``ghns evaluate`` does), ``val_nll_grid``
(the grid point of lowest val log-loss), ``equal`` (equal weights, nothing chosen),
``loglinear_equal`` (sum of log-scores), ``loglinear_calibrated`` (one temperature per
classifier fitted on val log-loss, then the sum of tempered log-scores). ``oracle_ceiling`` is the
best grid point *on test*: a ceiling of what any weights could do with these classifiers, never a
result. Last line: one JSON object.

    python benchmarks/fusion_rules.py --run-dir runs/cub
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ghns.fusion import fuse, search_weights, topk_accuracy, weight_grid


def log_scores(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-12, None))


def nll(scores: np.ndarray, labels: np.ndarray, log: bool = False) -> float:
    z = scores if log else log_scores(scores / scores.sum(1, keepdims=True))
    if log:
        z = z - z.max(1, keepdims=True)
        z = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-z[np.arange(len(labels)), labels].mean())


def fit_temperature(p: np.ndarray, labels: np.ndarray) -> float:
    grid = np.exp(np.linspace(np.log(0.1), np.log(10.0), 200))
    return float(min(grid, key=lambda t: nll(log_scores(p) / t, labels, log=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--classifiers", default="original,object,parts")
    args = ap.parse_args()
    scores = Path(args.run_dir) / "scores"
    val, test = dict(np.load(scores / "val.npz")), dict(np.load(scores / "test.npz"))
    names = args.classifiers.split(",")
    yv, yt = val["label"], test["label"]
    v, t = [val[n] for n in names], [test[n] for n in names]
    grid = weight_grid(len(names), 0.05)
    out: dict = {"single": {n: round(topk_accuracy(test[n], yt), 2) for n in names}}
    w, _ = search_weights(v, yv, 0.05)
    out["val_grid"] = {"weights": list(w), "test_top1": round(topk_accuracy(fuse(t, w), yt), 2)}
    w = min(grid, key=lambda g: nll(fuse(v, g), yv))
    out["val_nll_grid"] = {"weights": list(w), "test_top1": round(topk_accuracy(fuse(t, w), yt), 2)}
    eq = tuple([1.0 / len(names)] * len(names))
    out["equal"] = {"test_top1": round(topk_accuracy(fuse(t, eq), yt), 2)}
    out["loglinear_equal"] = {"test_top1": round(topk_accuracy(sum(log_scores(x) for x in t), yt), 2)}
    temps = [fit_temperature(x, yv) for x in v]
    fused = sum(log_scores(x) / tau for x, tau in zip(t, temps))
    out["loglinear_calibrated"] = {"temperatures": [round(x, 3) for x in temps],
                                   "test_top1": round(topk_accuracy(fused, yt), 2)}
    out["oracle_ceiling"] = round(max(topk_accuracy(fuse(t, g), yt) for g in grid), 2)
    print(json.dumps({"bench": "fusion_rules", "run_dir": args.run_dir, "classifiers": names, **out}))


if __name__ == "__main__":
    main()
