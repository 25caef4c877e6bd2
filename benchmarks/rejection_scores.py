"""Which score tells known images from unknown ones: a classifier's confidence, the part-set
similarity, or both.

On finished runs whose catalog has unknown images (``ghns pipeline ... --synthetic-near-misses``
(on by default for the synthetic set) or ``--open-set-classes K``), this script rescores every
rejection image of each run exactly as ``ghns evaluate`` does (``ghns.evaluate.
rejection_confidences``: cached inputs, the run's classifiers and fusion) and reports, for the
classifier with hard negatives:

* per run and unknown kind, the AUROC (known test images against the kind's test images; val the
  same on val) of each score: ``parts`` and ``fused`` (maximum softmax), ``similarity`` (the nearest
  train image's mean part cosine) and ``combined`` (the product of their known-val p-values);
* ``detector``: the generated negatives used directly as examples of "no class": a logistic
  regression on whole part sets, train images (label 1) against the run's bank (label 0), class
  weights balanced, its L2 weight chosen among ``DECAYS`` by val AUROC; its log-odds of "real" is
  the score. This is the most direct way for the negatives to reach a rejection, and the test of
  whether a composite stands for an object of no class;
* over the runs, ``similarity``, ``combined`` and ``detector`` minus ``fused`` with a 95% interval
  from the two-way bootstrap of ``ghns.stats.paired_auroc_bootstrap`` (runs, known and unknown
  images resampled; runs of one dataset share their test images, so the pairing is by image).

    python benchmarks/rejection_scores.py --run-dir R1 [--run-dir R2 ...]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

SCORES = ("parts", "fused", "similarity", "combined", "detector")
DECAYS = (1e-4, 1e-3, 1e-2)


def fit_detector(real: np.ndarray, generated: np.ndarray, decay: float, epochs: int = 300, seed: int = 0):
    """Logistic regression (full-batch L-BFGS) of real (1) against generated (0) part sets, flattened;
    the two classes weigh the same. Returns a function: sets -> log-odds of real."""
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(np.concatenate([real, generated]).reshape(len(real) + len(generated), -1)).float()
    y = torch.cat([torch.ones(len(real)), torch.zeros(len(generated))])
    w = torch.where(y > 0, 0.5 / len(real), 0.5 / len(generated))
    lin = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=epochs, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (w * torch.nn.functional.binary_cross_entropy_with_logits(lin(x)[:, 0], y, reduction="none")).sum()
        loss = loss + decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)

    def score(sets: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return lin(torch.from_numpy(np.asarray(sets, np.float32).reshape(len(sets), -1)))[:, 0].numpy()
    return score


def add_detector(c: dict, run, kinds: list[str]) -> float:
    """Adds ``"detector"`` to every set of ``c``; returns the L2 weight chosen on val."""
    from ghns.train_parts.table import read_embeddings
    from ghns.generate.bank import read_bank
    from ghns.stats import auroc

    meta, emb = read_embeddings(run.embeddings)
    real = emb[(meta["split"] == "train").to_numpy()]
    _, bank = read_bank(run.path / "negatives")
    generated = bank.reshape(len(bank), *real.shape[1:])
    inputs = dict(np.load(run.path / "rejection" / "inputs.npz"))
    best = None
    for decay in DECAYS:
        f = fit_detector(real, generated, decay)
        val = np.mean([auroc(f(inputs["known_val/embeddings"]), f(inputs[f"{k}_val/embeddings"])) for k in kinds])
        if best is None or val > best[0]:
            best = (val, decay, f)
    assert best is not None
    for name in c:
        c[name]["detector"] = best[2](inputs[f"{name}/embeddings"])
    return best[1]


def main() -> None:
    from ghns.config import Config
    from ghns.data.catalog import Catalog
    from ghns.rejection import KINDS
    from ghns.rundir import RunDir
    from ghns.evaluate import KnownSets, build_report, compute_scores, rejection_confidences
    from ghns.stats import auroc, paired_auroc_bootstrap

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", action="append", required=True, help="a finished run (repeat for seeds)")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()

    per_run, conf_by_run = {}, []
    for path in args.run_dir:
        run = RunDir(path)
        cfg = Config.from_yaml(run.config, saved_run=True)
        catalog = Catalog.read(run.catalog)
        scores = compute_scores(cfg, run, catalog)  # the cached scores of the run's evaluate
        known = KnownSets.of(run)
        conf = rejection_confidences(cfg, run, catalog, scores, build_report(cfg, run, catalog, scores, known),
                                     known=known)
        if conf is None:
            raise SystemExit(f"{path}: the catalog names no unknown images (see this script's docstring)")
        c = conf["with_negatives"]
        decay = add_detector(c, run, [k for k in KINDS if k in c])
        conf_by_run.append(c)
        per_run[path] = {kind: {"test": {s: round(auroc(c["known"][s], c[kind][s]), 4) for s in SCORES},
                                "val": {s: round(auroc(c["known_val"][s], c[f"{kind}_val"][s]), 4)
                                        for s in SCORES}}
                         for kind in KINDS if kind in c}
        per_run[path]["detector_decay"] = decay
    out: dict = {"runs": per_run, "vs_fused": {}}
    for kind in KINDS:
        if not all(kind in c for c in conf_by_run):
            continue
        stacked = {split: {s: (np.stack([c[known][s] for c in conf_by_run]),
                               np.stack([c[unknown][s] for c in conf_by_run])) for s in SCORES}
                   for split, known, unknown in (("test", "known", kind), ("val", "known_val", f"{kind}_val"))}
        out["vs_fused"][kind] = {
            split: {s: paired_auroc_bootstrap(*stacked[split][s], *stacked[split]["fused"], n_boot=args.n_boot)
                    for s in ("similarity", "combined", "detector")}
            for split in stacked}
        out["vs_fused"][kind]["mean_auroc"] = {
            split: {s: round(float(np.mean([r[kind][split][s] for r in per_run.values()])), 4) for s in SCORES}
            for split in ("test", "val")}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
