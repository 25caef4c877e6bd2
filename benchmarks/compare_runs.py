"""Which outputs of two finished runs are equal: for checking that a change of code changes no
result (the same command run with the commit before and after it, on one machine).

    python benchmarks/compare_runs.py RUN_BEFORE RUN_AFTER

Compares the report's accuracies and tables, the localization table, the part embeddings, every
model's tensors (bitwise), the bank of hard negatives (its rows; the FilterNet scores stored with
them separately, as the largest difference) and the saved val/test scores. Runs of older ghns
versions are read under today's names (``ghns.rundir``). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ghns.rundir import RunDir

REPORT_KEYS = ("accuracy", "top3", "top5", "fusion_weights", "table6", "confused_pairs",
               "seed_ensemble", "parts_without_negatives")


def _weights_equal(a: Path, b: Path) -> bool:
    wa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    wb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _bank(run: RunDir) -> pd.DataFrame:
    shards = sorted(run.negatives.glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in shards]).reset_index(drop=True) if shards else pd.DataFrame()


def compare(before: RunDir, after: RunDir) -> dict:
    out: dict = {}
    ra, rb = (json.loads(r.report_json.read_text()) for r in (before, after))
    out["accuracy_before"], out["accuracy_after"] = ra["accuracy"], rb["accuracy"]
    out["report_equal"] = {k: ra.get(k) == rb.get(k) for k in REPORT_KEYS}
    out["localization_equal"] = pd.read_parquet(before.localization).equals(pd.read_parquet(after.localization))
    out["embeddings_equal"] = pd.read_parquet(before.embeddings).equals(pd.read_parquet(after.embeddings))
    models = {"localizer": (before.path / "localize" / "model.pt", after.path / "localize" / "model.pt"),
              "part_networks": (before.part_networks, after.part_networks),
              "filternet": (before.filternet, after.filternet)}
    models.update({f"train-final/{p.stem}": (p, after.train_final / p.name)
                   for p in sorted(before.train_final.glob("*.pt"))})
    out["models_equal"] = {k: b.is_file() and _weights_equal(a, b) for k, (a, b) in models.items()}
    ba, bb = _bank(before), _bank(after)
    rows = [c for c in ba.columns if c != "score"]
    out["bank_rows_equal"] = ba.shape == bb.shape and ba[rows].equals(bb[rows])
    if "score" in ba and ba.shape == bb.shape:
        out["bank_score_max_difference"] = float(np.abs(ba["score"].to_numpy() - bb["score"].to_numpy()).max())
    for split in ("val", "test"):
        sa, sb = np.load(before.scores / f"{split}.npz"), np.load(after.scores / f"{split}.npz")
        out[f"scores_{split}_equal"] = set(sa.files) == set(sb.files) and all(
            np.array_equal(sa[k], sb[k]) for k in sa.files)
    out["seconds_before"], out["seconds_after"] = ra.get("seconds"), rb.get("seconds")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    args = ap.parse_args()
    print(json.dumps(compare(RunDir(args.before), RunDir(args.after))))


if __name__ == "__main__":
    main()
