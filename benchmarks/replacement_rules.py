"""The generator's replacement rules, one at a time, on a run's stage-1 outputs: purity and fill.

For a run directory with stage 1 done, the bank is generated in-process (the Ray Data actor's
code, without Ray) under each setting below, into a temporary folder, and measured the way
``generate.json`` measures it: kept negatives, classes filled, purity overall and the classes with
a full budget and purity >= 0.9 (where the dataset has part ground truth: the synthetic set),
and the share of swapped parts inside their class's own spread (any dataset).

    python benchmarks/replacement_rules.py --run-dir runs/synth

Settings: the defaults; each rule switched off alone (donor classes, band, calibration); the
paper's order (no donors, no band, uncalibrated tau 0.95, the generator before these rules); and
the defaults at tau 0.3 and 0.8. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from ghns.config import Config
from ghns.data.catalog import Catalog
from ghns.rundir import RunDir
from ghns.generate.actor import GenerateActor
from ghns.generate.stage import bank_figures, filternet_temperature, prepare_store

SETTINGS = {
    "defaults": {},
    "no donor classes": {"donor_classes": 0},
    "no band": {"band_quantile": 1.0},
    "not calibrated": {"calibrate": False},
    "donors only at the paper's tau": {"tau": 0.95},
    "paper order (before)": {"donor_classes": 0, "band_quantile": 1.0, "calibrate": False, "tau": 0.95},
    "tau 0.3": {"tau": 0.3},
    "tau 0.8": {"tau": 0.8},
}


def measure(run: RunDir, catalog: Catalog, settings: dict, temperature: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        store = Path(folder) / "store"
        prepare_store(run, store, len(catalog.classes), {"neighbour_index": "auto", **settings})
        actor = GenerateActor(str(store), str(run.filternet), folder, settings["per_class"],
                              settings["tau"], settings["neighbors"], settings["max_part_similarity"],
                              threads=2, band_quantile=settings["band_quantile"],
                              temperature=temperature if settings["calibrate"] else 1.0,
                              donors=settings["donor_classes"])
        stats = [actor.one_class(c) for c in range(len(catalog.classes))]
        seconds = time.perf_counter() - start
        shutil.rmtree(store)
        figures = bank_figures(run, catalog, Path(folder), settings["per_class"])
    purity = figures["purity"] or {}
    sim = figures["swap_similarity"] or {}
    return {"kept": int(sum(s["kept"] for s in stats)),
            "classes_full": int(sum(s["kept"] >= settings["per_class"] for s in stats)),
            "candidates": int(sum(s["candidates"] for s in stats)),
            "purity": purity.get("overall"), "classes_pure": purity.get("classes_pure"),
            "same_variant_rate": figures["same_variant_rate"],
            "inside_own_spread": sim.get("inside_own_spread"), "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    args = ap.parse_args()
    run = RunDir(args.run_dir)
    catalog = Catalog.read(run.catalog)
    cfg = Config()
    temperature = filternet_temperature(run)
    rows = {}
    for name, change in SETTINGS.items():
        settings = {"per_class": cfg.per_class, "tau": cfg.tau, "neighbors": cfg.neighbors,
                    "max_part_similarity": cfg.max_part_similarity, "donor_classes": cfg.donor_classes,
                    "band_quantile": cfg.band_quantile, "calibrate": cfg.calibrate, **change}
        rows[name] = {**change, **measure(run, catalog, settings, temperature)}
        print(f"{name}: {rows[name]}", flush=True)
    print(json.dumps({"bench": "replacement_rules", "run_dir": str(run.path), "classes": len(catalog.classes),
                      "filternet_temperature": temperature, "settings": rows}))


if __name__ == "__main__":
    main()
