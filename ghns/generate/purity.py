"""What the kept negatives are: purity against part ground truth where a dataset has it, and, on
any dataset, how similar each swapped-in part is to the part it replaced (pure numpy/pandas).

* **Purity** (synthetic data, whose classes are known part variants): a kept set is *pure* when
  every swapped-in part is of a different variant than the part it replaced, so the set really
  differs from its reference class (a near miss); ``same_variant_rate`` counts the sets whose
  swapped parts are all of the reference's own variant (they look exactly like the class: false
  negatives). Ground truth is read for measuring only, never for generating.
* **Swap similarity** (any dataset): the cosine similarity between each swapped-in part and the
  part it replaced, against the class's own spread (the similarities between two of the class's
  own images for that part). Swaps inside the class's own spread are the likely false negatives;
  on data without part labels this is the purity proxy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from ghns.models import N_PARTS

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def shell_names(bank: pd.DataFrame) -> pd.Series:
    """Each kept set's shell as the generator visits them: ``1 part, rank r`` or
    ``2 parts, rank r`` (r: the largest neighbour rank among the swapped parts)."""
    ranks = bank[[f"rank{k + 1}" for k in range(N_PARTS)]].to_numpy()
    n = (ranks >= 0).sum(axis=1)
    top = ranks.max(axis=1)
    return pd.Series([f"{a} part{'s' if a > 1 else ''}, rank {b}" for a, b in zip(n, top)],
                     index=bank.index)


def purity_figures(bank: pd.DataFrame, variants: np.ndarray, true_part: dict[int, int],
                   per_class: int | None = None) -> dict[str, Any]:
    """``variants`` (C, 3): each class's variant per true part; ``true_part``: learned part
    index -> true part index. Purity overall, per shell and per class, and same_variant_rate;
    ``classes_pure``: classes with ``per_class`` kept sets (when given) and purity >= 0.9."""
    if bank.empty:
        return {"overall": None, "same_variant_rate": None, "per_shell": {}, "per_class": {},
                "classes_pure": 0}
    ref = bank["class"].to_numpy()
    pure = np.ones(len(bank), bool)
    same = np.ones(len(bank), bool)
    for k in range(N_PARTS):
        swapped = bank["swapped"].str[k].to_numpy() == "1"
        src = bank[f"part{k + 1}_class"].to_numpy()
        differs = variants[ref, true_part[k]] != variants[src, true_part[k]]
        pure &= ~swapped | differs
        same &= ~swapped | ~differs
    ranks = bank[[f"rank{k + 1}" for k in range(N_PARTS)]].to_numpy()
    frame = pd.DataFrame({"pure": pure, "shell": shell_names(bank).to_numpy(), "class": ref,
                          "order": (ranks >= 0).sum(axis=1) * 10**6 + ranks.max(axis=1)})
    order = frame.groupby("shell")["order"].first().sort_values().index
    by_shell = frame.groupby("shell")["pure"].agg(["size", "mean"]).loc[order]
    by_class = frame.groupby("class")["pure"].agg(["size", "mean"])
    full = by_class["size"] >= (per_class or 0)
    return {
        "overall": round(float(pure.mean()), 4),
        "same_variant_rate": round(float(same.mean()), 4),
        "per_shell": {s: {"kept": int(r["size"]), "purity": round(float(r["mean"]), 4)}
                      for s, r in by_shell.iterrows()},
        "per_class": {int(c): round(float(r["mean"]), 4) for c, r in by_class.iterrows()},
        "classes_pure": int(((by_class["mean"] >= 0.9) & full).sum()),
    }


def swap_similarities(bank: pd.DataFrame, row_of: dict[int, int], embeddings: np.ndarray) -> np.ndarray:
    """(M, 3) cosine similarity of each kept set's part k to its reference's part k (NaN where
    part k was kept). ``row_of`` maps image id -> row of ``embeddings`` (N, 3, D), unit vectors."""
    out = np.full((len(bank), N_PARTS), np.nan)
    if bank.empty:
        return out
    ref_rows = np.array([row_of[int(i)] for i in bank["ref_image"]])
    for k in range(N_PARTS):
        src_rows = np.array([row_of[int(i)] for i in bank[f"part{k + 1}_image"]])
        sims = np.einsum("md,md->m", embeddings[ref_rows, k].astype(np.float64),
                         embeddings[src_rows, k].astype(np.float64))
        swapped = bank["swapped"].str[k].to_numpy() == "1"
        out[swapped, k] = sims[swapped]
    return out


def own_pairs(embeddings: np.ndarray, labels: np.ndarray, part: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarities between the part-``part`` embeddings of two distinct images of the same
    class, pooled over classes, and each class's median of them (NaN with fewer than 2 images)."""
    x = embeddings[:, part].astype(np.float64)
    pooled, medians = [], np.full(int(labels.max()) + 1 if len(labels) else 0, np.nan)
    for c in np.unique(labels):
        m = x[labels == c]
        if len(m) < 2:
            continue
        sims = (m @ m.T)[np.triu_indices(len(m), k=1)]
        pooled.append(sims)
        medians[c] = float(np.median(sims))
    return (np.concatenate(pooled) if pooled else np.zeros(0)), medians


def similarity_figures(bank: pd.DataFrame, row_of: dict[int, int], embeddings: np.ndarray,
                       labels: np.ndarray) -> dict[str, Any]:
    """Per part: quantiles of the swapped-in parts' similarity to the part they replaced, the
    same quantiles of the class's own pairs, and the share of swaps at or above their class's
    own median (inside the class's spread: likely false negatives)."""
    sims = swap_similarities(bank, row_of, embeddings)
    out: dict[str, Any] = {"quantiles": list(QUANTILES)}
    inside_all = []
    for k in range(N_PARTS):
        own, medians = own_pairs(embeddings, labels, k)
        mask = ~np.isnan(sims[:, k])
        swapped = sims[mask, k]
        inside = swapped >= medians[bank["class"].to_numpy()[mask]] if len(swapped) else np.zeros(0, bool)
        inside_all.append(inside)
        out[f"part{k + 1}"] = {
            "swaps": int(mask.sum()),
            "swapped": [round(float(v), 4) for v in np.quantile(swapped, QUANTILES)] if len(swapped) else None,
            "own_class": [round(float(v), 4) for v in np.quantile(own, QUANTILES)] if len(own) else None,
            "inside_own_spread": round(float(inside.mean()), 4) if len(inside) else None,
        }
    every = np.concatenate(inside_all) if inside_all else np.zeros(0)
    out["inside_own_spread"] = round(float(every.mean()), 4) if len(every) else None
    return out
