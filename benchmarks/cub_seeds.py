"""The whole pipeline on a real dataset for several seeds, against the linear probe of the same split.

For each seed, ``ghns pipeline --seed S --run-dir <root>/seed<S>`` (a finished run is read, an
unfinished one resumes) and ``benchmarks/linear_probe.py --seed S``: the seed draws the
validation split carved from train too, so each run is compared with the probe of its own split
(the test split is the dataset's and the same for all). Prints a table of mean +- std of every
classifier, the fused classifier, fused without negatives, the seed-ensemble control and the
probe, writes ``<root>/seeds.json`` and ``<root>/seeds.png``, and ends with one JSON line.

    python benchmarks/cub_seeds.py --root ../shared/data/cub50-dev/CUB_200_2011 --runs runs/cub-seeds
    python benchmarks/cub_seeds.py --dataset imagefolder --root ../shared/data/flowers12 --seeds 0 --runs runs/flowers

Each seed is a whole pipeline (about 25-30 minutes for ``cub50-dev`` on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROWS = ("original", "object", "parts", "fused", "fused_without_negatives", "seed_ensemble")


def run_seed(args, seed: int) -> dict:
    run = Path(args.runs) / f"seed{seed}"
    report = run / "report.json"
    if not report.is_file():
        cmd = ["ghns", "pipeline", "--dataset", args.dataset, "--root", args.root, "--seed", str(seed),
               "--run-dir", str(run), *args.extra]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads(report.read_text())


def probe(args, seed: int) -> dict:
    out = Path(args.runs) / f"linear_probe_seed{seed}.json"
    if not out.is_file():
        cmd = [sys.executable, str(Path(__file__).with_name("linear_probe.py")), "--dataset", args.dataset,
               "--root", args.root, "--seed", str(seed)]
        print("$", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(done.stdout.strip().splitlines()[-1])
    return json.loads(out.read_text())


def summarise(reports: dict[int, dict], probes: dict[int, dict]) -> dict:
    table = {}
    for row in ROWS:
        values = [r["accuracy"].get(row) for r in reports.values()]
        values = [v for v in values if v is not None]
        if values:
            table[row] = {"mean": round(float(np.mean(values)), 2),
                          "std": round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 2),
                          "per_seed": values}
    bar = [probes[s]["test_top1"] for s in reports]
    table["linear_probe"] = {"mean": round(float(np.mean(bar)), 2),
                             "std": round(float(np.std(bar, ddof=1)) if len(bar) > 1 else 0.0, 2),
                             "per_seed": bar}
    fused = table.get("fused", {}).get("per_seed", [])
    ensemble = table.get("seed_ensemble", {}).get("per_seed", [])
    return {"seeds": list(reports), "probe_test_top1": table["linear_probe"]["mean"], "table": table,
            "fused_minus_probe": round(table["fused"]["mean"] - table["linear_probe"]["mean"], 2) if fused else None,
            "every_seed_fused_above_probe": bool(fused) and all(f > b for f, b in zip(fused, bar)),
            "every_seed_fused_above_ensemble": bool(ensemble) and all(f > e for f, e in zip(fused, ensemble)),
            "seconds_per_stage": {s: round(float(np.mean([r["seconds"].get(s, 0) for r in reports.values()])), 1)
                                  for s in next(iter(reports.values()))["seconds"]}}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(summary["table"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, row in enumerate(rows):
        vals = summary["table"][row]["per_seed"]
        ax.scatter([i] * len(vals), vals, color="#888", s=12, zorder=3)
        ax.errorbar(i, summary["table"][row]["mean"], yerr=summary["table"][row]["std"], fmt="o",
                    color="#c44" if row == "fused" else "#248", capsize=4, zorder=4)
    ax.axhline(summary["probe_test_top1"], color="#2a2", ls="--", label="linear probe")
    ax.set_xticks(range(len(rows)), [r.replace("_", " ") for r in rows], rotation=25, ha="right")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{len(summary['seeds'])} seeds: mean +- std")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cub")
    ap.add_argument("--root", required=True)
    ap.add_argument("--runs", required=True, help="folder of the runs (one per seed)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("extra", nargs="*", help="more 'ghns pipeline' flags, after --")
    args = ap.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]
    reports = {s: run_seed(args, s) for s in seeds}
    summary = summarise(reports, {s: probe(args, s) for s in seeds})
    root = Path(args.runs)
    (root / "seeds.json").write_text(json.dumps(summary, indent=2))
    plot(summary, root / "seeds.png")
    print("| classifier | mean | std | per seed |\n| --- | --- | --- | --- |")
    for row, v in summary["table"].items():
        print(f"| {row} | {v['mean']} | {v['std']} | {', '.join(str(x) for x in v['per_seed'])} |")
    print(json.dumps({"bench": "cub_seeds", **summary}))


if __name__ == "__main__":
    main()
