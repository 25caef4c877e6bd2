"""Rebuild a run's hard-negative bank with the code installed now and compare it with the bank in
the run (provenance and set embeddings exactly, scores within a tolerance): a check that a change
to the generator keeps what existing runs kept.

    python benchmarks/rebuild_bank.py --run-dir R

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from ghns.config import Config
from ghns.raykit import ensure_ray
from ghns.rundir import RunDir
from ghns.generate.bank import read_bank
from ghns.generate.stage import generator_settings, prepare_bank, write_bank


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    args = ap.parse_args()
    run = RunDir(args.run_dir)
    cfg = Config.from_yaml(run.config)
    ensure_ray(cfg)
    settings = generator_settings(cfg)
    with tempfile.TemporaryDirectory(dir=run.path) as tmp:
        folder = Path(tmp) / "bank"
        prepare_bank(run, folder, settings)
        _, _, lookup = write_bank(cfg, run, folder, settings)
        old, old_sets = read_bank(run.negatives)
        new, new_sets = read_bank(folder)
    same = (len(old) == len(new) and old.drop(columns="score").equals(new.drop(columns="score"))
            and np.array_equal(old_sets, new_sets))
    diff = float(np.abs(old["score"].to_numpy() - new["score"].to_numpy()).max()) if same and len(old) else None
    print(json.dumps({"bench": "rebuild_bank", "run_dir": str(run.path), "rows": [len(old), len(new)],
                      "same_bank": bool(same), "max_score_diff": diff, "lookup": lookup}))


if __name__ == "__main__":
    main()
