"""What Ray Train adds to the training stages: the same pipeline run with ``--trainer ray``
(every training loop on a Ray Train worker group of one) and ``--trainer local`` (the same loops
in the driver process, what ``auto`` picks for one CPU worker), each a fresh process with Ray's
start included, then the two runs compared output by output.

    python benchmarks/overhead.py [--runs DIR] [-- PIPELINE FLAGS...]

Without pipeline flags it runs a small synthetic problem (8 classes, a few epochs: start-up is
a visible part of it, as in the tests and in short runs); pass ``--`` and flags for another,
e.g. ``-- --synthetic-classes 30`` or ``-- --dataset cub --root PATH``. The dataset is read
once before either run (``ghns data info``), so neither pays for rendering or a cold cache.
Prints one line per run, then JSON: wall seconds and each stage's seconds both ways, the
ratios local / ray, and whether the results are equal (``compare_runs.compare``: accuracies,
every model bitwise, scores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_runs import compare  # noqa: E402

from ghns.rundir import RunDir  # noqa: E402

SMALL = ["--synthetic-classes", "8", "--synthetic-per-class", "24", "--localize-epochs", "4",
         "--stage1-epochs", "4", "--stage3-epochs", "3", "--parts-epochs", "20", "--per-class", "20"]
TRAINING = ("localize", "train-parts", "train-final")


def pipeline(run: Path, trainer: str, flags: list[str]) -> float:
    """Wall seconds of ``ghns pipeline`` in a fresh process (Ray start included)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ghns", "pipeline", "--run-dir", str(run), "--quiet",
                           "--trainer", trainer, *flags], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"ghns pipeline --trainer {trainer} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("/tmp/ghns-overhead"),
                    help="folder for the two run directories (emptied first)")
    ap.add_argument("flags", nargs="*", help="pipeline flags after '--' (default: a small synthetic problem)")
    args = ap.parse_args()
    flags = args.flags or SMALL
    shutil.rmtree(args.runs, ignore_errors=True)
    args.runs.mkdir(parents=True)

    subprocess.run([sys.executable, "-m", "ghns", "data", "info", *_catalog_flags(flags)],
                   capture_output=True, check=True)
    wall, seconds = {}, {}
    for trainer in ("ray", "local"):
        wall[trainer] = round(pipeline(args.runs / trainer, trainer, flags), 1)
        report = json.loads(RunDir(args.runs / trainer).report_json.read_text())
        seconds[trainer] = report["seconds"]
        print(f"--trainer {trainer}: {wall[trainer]:.1f} s wall; stages {seconds[trainer]}", flush=True)
    same = compare(RunDir(args.runs / "ray"), RunDir(args.runs / "local"))
    training = {t: round(sum(seconds[t].get(s, 0.0) for s in TRAINING), 1) for t in wall}
    print(json.dumps({
        "flags": flags,
        "wall_seconds": wall,
        "wall_ratio_local_over_ray": round(wall["local"] / wall["ray"], 3),
        "training_stage_seconds": training,
        "training_ratio_local_over_ray": round(training["local"] / training["ray"], 3),
        "stage_seconds": seconds,
        "accuracy_equal": same["accuracy_before"] == same["accuracy_after"],
        "models_equal": same["models_equal"],
        "scores_equal": {k: v for k, v in same.items() if k.startswith("scores_")},
    }, indent=1))


def _catalog_flags(flags: list[str]) -> list[str]:
    """The dataset-describing flags among ``flags`` (``ghns data info`` takes only these)."""
    from ghns.config import Config

    keep, i = [], 0
    while i < len(flags):
        key = flags[i].lstrip("-").replace("-", "_")
        takes_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        if key in Config.keys() and Config.field_info(key).metadata.get("section") == "catalog":
            keep += flags[i:i + 2] if takes_value else flags[i:i + 1]
        i += 2 if takes_value else 1
    return keep


if __name__ == "__main__":
    main()
