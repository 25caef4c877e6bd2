"""The whole pipeline on a real dataset for several seeds, against the linear probe of the same split.

For each seed, ``ghns pipeline --seed S --run-dir <root>/seed<S>`` (a finished run is read, an
unfinished one resumes) and ``benchmarks/linear_probe.py --seed S``: the seed draws the
validation split carved from train too, so each run is compared with the probe of its own split
(the test split is the dataset's and the same for all). Prints a table of mean +- std of every
classifier, the fused classifier, fused without negatives, the seed-ensemble control and the
probe, and the paired differences fused - probe and fused - seed ensemble with 95% intervals
(``ghns.stats.paired_bootstrap``: seeds and test images resampled, each seed's fused predictions
against that seed's probe on the same test images); writes ``<root>/seeds.json`` and
``<root>/seeds.png``, and ends with one JSON line.

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
    if not out.is_file() or not _probe_predictions(args, seed).is_file():
        cmd = [sys.executable, str(Path(__file__).with_name("linear_probe.py")), "--dataset", args.dataset,
               "--root", args.root, "--seed", str(seed), "--predictions", str(_probe_predictions(args, seed))]
        print("$", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(done.stdout.strip().splitlines()[-1])
    return json.loads(out.read_text())


def _probe_predictions(args, seed: int) -> Path:
    return Path(args.runs) / f"linear_probe_seed{seed}.npz"


def correct_on_test(args, seed: int) -> dict[str, np.ndarray]:
    """Per test image (in image-id order): is it right, for the fused classifier (the run's own
    fusion of its cached scores), the seed-ensemble control and the probe of the same split."""
    from ghns.fusion import Fusion

    run = Path(args.runs) / f"seed{seed}"
    report = json.loads((run / "report.json").read_text())
    test = dict(np.load(run / "scores" / "test.npz"))
    order = np.argsort(test["image_id"])
    fusion = Fusion.from_dict(report.get("fusion") or {"weights": report["fusion_weights"]})
    fused = fusion([test[n] for n in ("original", "object", "parts")]).argmax(1)
    out = {"fused": (fused == test["label"])[order]}
    members = sorted(n for n in test if n == "original" or n.startswith("original_seed"))
    if len(members) > 1:
        ensemble = Fusion.from_dict(report["seed_ensemble"])([test[n] for n in members]).argmax(1)
        out["seed_ensemble"] = (ensemble == test["label"])[order]
    saved = np.load(_probe_predictions(args, seed))
    probe_order = np.argsort(saved["image_id"])
    if not np.array_equal(saved["image_id"][probe_order], test["image_id"][order]):
        raise SystemExit(f"seed {seed}: the probe's test images differ from the run's")
    out["probe"] = (saved["predicted"] == saved["label"])[probe_order]
    return out


def paired(args, seeds: list[int]) -> dict:
    from ghns.stats import paired_bootstrap

    per_seed = [correct_on_test(args, s) for s in seeds]
    out = {}
    for other in ("probe", "seed_ensemble"):
        if all(other in c for c in per_seed):
            boot = paired_bootstrap(np.stack([c["fused"] for c in per_seed]),
                                    np.stack([c[other] for c in per_seed]))
            out[f"fused_minus_{other}"] = {"mean": boot["mean"], "ci95": boot["ci95"]}
    return out


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
    summary["paired"] = paired(args, seeds)
    root = Path(args.runs)
    (root / "seeds.json").write_text(json.dumps(summary, indent=2))
    plot(summary, root / "seeds.png")
    print("| classifier | mean | std | per seed |\n| --- | --- | --- | --- |")
    for row, v in summary["table"].items():
        print(f"| {row} | {v['mean']} | {v['std']} | {', '.join(str(x) for x in v['per_seed'])} |")
    for name, v in summary["paired"].items():
        print(f"{name.replace('_', ' ')}: {v['mean']:+.2f} points, 95% interval {v['ci95']}")
    print(json.dumps({"bench": "cub_seeds", **summary}))


if __name__ == "__main__":
    main()
