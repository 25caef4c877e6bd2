"""Why the generated negatives do not help near-miss rejection: what the bank holds, measured
against the synthetic set's ground truth, and what an outlier-exposure term does with each part
of it.

On a finished synthetic run (``ghns pipeline --run-dir R``: its near misses scored by evaluate),
this script reads the bank and the classes' part variants (ground truth, used here for measuring
only, never by ghns) and reports:

* ``bank``: kept negatives; ``pure`` (every swapped part of another variant than the reference's:
  the generator's own purity), ``no_class`` (the set's combination of variants is no class's at
  all: a near miss) and ``other_class`` (pure, but exactly another class's combination); how well
  FilterNet's score of the reference class (what tau thresholds) tells no-class sets from the
  rest (AUROC), and the no-class share of the sets that a higher tau would keep;
* ``oe``: the parts classifier trained as ``ghns study``'s arms train it (head on the frozen
  stage-1 embeddings, ``--parts-keep not_worse``, ``--negative-logits uniform``) with the outlier
  term on (a) no negative at all, (b) the whole bank, (c) only its ``no_class`` sets (an oracle
  filter: ground truth picks them), (d) only its ``other_class`` sets; per arm the near-miss AUROC
  on test and val (parts classifier, maximum softmax score) and parts test top-1, mean over seeds.

    python benchmarks/negative_purity.py --run-dir R [--seeds 5] [--weight 2.0] [--patience 0]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from ghns.config import Config
    from ghns.data.catalog import Catalog
    from ghns.rejection import confidence
    from ghns.generate.bank import read_bank
    from ghns.train_final.parts import NegativeBank, PartsData, PartsSettings, fit_parts_classifier, parts_probe, parts_softmax
    from ghns.stats import auroc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--weight", type=float, default=2.0, help="--negative-logits-weight of the OE arms")
    ap.add_argument("--patience", type=int, default=0, help="--patience of every arm (0: all epochs)")
    args = ap.parse_args()
    run = args.run_dir
    torch.set_num_threads(2)
    catalog = Catalog.read(run / "catalog.parquet")
    if catalog.dataset != "synthetic":
        raise SystemExit("negative_purity.py needs a synthetic run (its classes' part variants are known)")
    attrs = np.array([catalog.info["class_attributes"][c] for c in catalog.classes])  # (C, 3): head, body, tail
    assignment = json.loads((run / "localization.json").read_text())["part_assignment"]  # true -> learned
    true_part = {int(v[len("part"):]) - 1: ["head", "body", "tail"].index(k) for k, v in assignment.items()}
    meta, emb = read_bank(run / "negatives")
    n = len(meta)
    combo = np.zeros((n, 3), np.int64)
    pure = np.ones(n, bool)
    ref = meta["class"].to_numpy()
    for k in range(3):
        src = meta[f"part{k + 1}_class"].to_numpy()
        combo[:, true_part[k]] = attrs[src, true_part[k]]
        swapped = meta["swapped"].str[k].to_numpy() == "1"
        pure &= ~swapped | (attrs[ref, true_part[k]] != attrs[src, true_part[k]])
    classes = {tuple(a) for a in attrs.tolist()}
    is_class = np.array([tuple(c) in classes for c in combo.tolist()])
    subsets = {"without": None, "whole bank": np.ones(n, bool), "no_class only (oracle)": ~is_class,
               "other_class only": pure & is_class}

    data = PartsData.read(run / "embeddings.parquet")
    probe = parts_probe(data, len(catalog.classes))
    flat = dict(np.load(run / "rejection" / "inputs.npz"))
    cfg = Config.from_yaml(run / "config.yaml", saved_run=True)
    settings = replace(PartsSettings.from_config(cfg), parts_keep="not_worse", negative_logits="uniform",
                       negative_logits_weight=args.weight, patience=args.patience)
    labels = catalog.split("test")["label"].to_numpy()

    def bank_of(mask: np.ndarray) -> NegativeBank:
        m = meta[mask].reset_index(drop=True)
        bank = NegativeBank(torch.from_numpy(emb[mask]))
        bank.by_class = {int(c): r for c, r in m.groupby("class").indices.items()}
        bank.by_ref = {int(r): rows for r, rows in m.groupby("ref_image").indices.items()}
        return bank

    arms = {}
    for name, mask in subsets.items():
        rows = []
        for seed in range(cfg.seed, cfg.seed + args.seeds):
            bank = bank_of(mask) if mask is not None else NegativeBank.empty(emb.shape[1])
            model, _ = fit_parts_classifier(data, bank, settings, len(catalog.classes), seed, mask is not None,
                                            probe=probe)
            conf = {s: confidence(parts_softmax(model, flat[f"{s}/embeddings"]))
                    for s in ("known", "near_miss", "known_val", "near_miss_val")}
            top1 = 100.0 * float((parts_softmax(model, flat["known/embeddings"]).argmax(1) == labels).mean())
            rows.append([auroc(conf["known"], conf["near_miss"]), auroc(conf["known_val"], conf["near_miss_val"]), top1])
        r = np.asarray(rows)
        arms[name] = {"negatives": int(mask.sum()) if mask is not None else 0,
                      "near_miss_auroc_test": round(float(r[:, 0].mean()), 4),
                      "near_miss_auroc_test_std": round(float(r[:, 0].std(ddof=1)), 4) if len(r) > 1 else 0.0,
                      "near_miss_auroc_val": round(float(r[:, 1].mean()), 4),
                      "parts_top1": round(float(r[:, 2].mean()), 2)}
        print(json.dumps({name: arms[name]}), flush=True)
    score = meta["score"].to_numpy()  # FilterNet's score of the reference class (tau's measure)
    by_tau = {f"{t:g}": {"kept": int((score >= t).sum()), "no_class": round(float((~is_class[score >= t]).mean()), 4)}
              for t in (0.5, 0.7, 0.9, 0.95) if (score >= t).any()}
    print(json.dumps({"run": str(run), "seeds": args.seeds, "weight": args.weight, "patience": args.patience,
                      "bank": {"kept": n, "pure": round(float(pure.mean()), 4),
                               "no_class": round(float((~is_class).mean()), 4),
                               "other_class": round(float((pure & is_class).mean()), 4),
                               "reference_class": round(float((~pure).mean()), 4),
                               "filternet_score_auroc_no_class": round(auroc(score[~is_class], score[is_class]), 4),
                               "at_tau": by_tau},
                      "oe": arms}))


if __name__ == "__main__":
    main()
