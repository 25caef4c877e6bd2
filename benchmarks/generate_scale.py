"""Stage 2 as the number of classes grows: time per class, peak RSS per actor, the part index.

Problem per size: C classes x 30 train images, 3 parts, D = 512, class-structured unit
embeddings (each class a centre per part, every other class sharing one part's centre with a
sibling, images scattered around them, as ``benchmarks/generate.py``), and a linear FilterNet
built from the centres (W_c = alpha * centre_c per part, alpha set so real sets score about
0.995 for their class, as confident as a FilterNet trained to its last epoch; training one at 5,000 classes would cost more than the benchmark). The
generator runs as ``ghns generate`` runs it: the driver writes the class-sorted embedding store
and the class centroids (``prepare_store``), then Ray Data streams class ids through 1 and 2
``GenerateActor`` actors, the defaults' rules (donor classes, band, tau 0.5, 150 per class).

Per size: seconds per class inside the actors (the generator's own work) and wall seconds per
class (Ray start-up of the map included), peak RSS per actor, store and centroid bytes, and for
the every-class rule (``--donor-classes 0``) the exact part index it would use (build seconds,
bytes) and, at the largest size, the approximate kinds too (IVF-Flat, IVF-PQ: nprobe tuned to a
recall of 0.95 as ``ghns generate`` tunes it, recall of the 16 nearest other-class parts against
exact search on 128 sampled queries). At the smallest size the bank is compared with brute force (every candidate of every shell
materialised and scored by dense FilterNet in float32, as ``benchmarks/generate.py`` does,
``fill_class_dense``) and between 1 and 2 actors.

    python benchmarks/generate_scale.py [--classes 200,1000,5000] [--plot docs/generate-scale.png]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ghns.checkpoint import save_checkpoint
from ghns.config import Config
from ghns.models.parts import FilterNet
from ghns.train_parts.table import write_embeddings
from ghns.generate.generate import fill_class, fill_class_dense
from ghns.generate.neighbours import NPROBE, PartNeighbours, search_recall
from ghns.generate.pool import PartStore
from ghns.generate.replacements import Replacements
from ghns.generate.scoring import OnDemandTables, class_scores
from ghns.generate.stage import class_batch, prepare_store

PER, D, PARTS = 30, 512, 3


def problem(classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, PARTS, D)).astype(np.float32)
    sibling = (np.arange(classes) + 1) % classes
    for c in range(0, classes, 2):
        centres[sibling[c], c % PARTS] = centres[c, c % PARTS]
    centres /= np.linalg.norm(centres, axis=2, keepdims=True)
    labels = np.repeat(np.arange(classes), PER)
    emb = np.empty((len(labels), PARTS, D), np.float32)
    for start in range(0, len(labels), 30000):  # bounded temporaries
        sl = slice(start, start + 30000)
        x = centres[labels[sl]] + 0.031 * rng.normal(size=(len(labels[sl]), PARTS, D)).astype(np.float32)
        emb[sl] = x / np.linalg.norm(x, axis=2, keepdims=True)
    return emb, labels, centres


def centre_filternet(emb: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> FilterNet:
    """A linear FilterNet W_c = alpha * centre_c, alpha bisected so that real sets' mean score for
    their own class is about 0.995 (on a sample of 512 sets)."""
    classes = len(centres)
    net = FilterNet(PARTS, D, classes)
    rows = np.linspace(0, len(labels) - 1, 512).astype(int)
    base = np.einsum("npd,cpd->nc", emb[rows].astype(np.float64), centres.astype(np.float64))
    lo, hi = 0.1, 200.0
    for _ in range(40):
        alpha = (lo + hi) / 2
        score = class_scores(alpha * base, labels[rows]).mean()
        lo, hi = (alpha, hi) if score < 0.995 else (lo, alpha)
    with torch.no_grad():
        net.net.weight.copy_(torch.from_numpy(alpha * centres.reshape(classes, -1)))
        net.net.bias.zero_()
    return net.eval()


def run_actors(cfg: Config, store: Path, filternet: Path, out: Path, classes: int, actors: int,
               settings: dict) -> tuple[float, pd.DataFrame]:
    from ghns.raykit import map_batches_pandas
    from ghns.generate.actor import GenerateActor

    t0 = time.perf_counter()
    stats = map_batches_pandas(
        pd.DataFrame({"class": range(classes)}), GenerateActor,
        {"store_path": str(store), "filternet_path": str(filternet), "out_dir": str(out),
         "per_class": settings["per_class"], "tau": settings["tau"], "neighbors": settings["neighbors"],
         "max_similarity": settings["max_part_similarity"], "band_quantile": settings["band_quantile"],
         "donors": settings["donor_classes"], "threads": max(1, 2 // actors)},
        cfg.replace(actors=actors), actors=actors,
        batch_size=class_batch(classes, actors))
    return time.perf_counter() - t0, stats


def same_shards(a: Path, b: Path) -> bool:
    from ghns.generate.bank import read_bank

    (ma, ea), (mb, eb) = read_bank(a), read_bank(b)
    return ma.drop(columns="score").equals(mb.drop(columns="score")) and np.array_equal(ea, eb)


def brute_force_check(emb, labels, net, settings, classes: int) -> bool:
    """The pipeline's per-class bank against dense FilterNet scoring of every candidate."""
    from ghns.generate.pool import ArrayPool

    pool = ArrayPool(emb, labels)
    repl = Replacements(pool, settings["neighbors"], settings["max_part_similarity"],
                        settings["band_quantile"], settings["donor_classes"])
    tables = OnDemandTables(net, pool)
    w = net.net.weight.detach()
    e = torch.from_numpy(emb)
    same = True
    for target in range(classes):
        refs = pool.class_rows(target)
        nb = repl.lists(target, refs)

        def dense(sources, target=target):
            with torch.no_grad():
                s = torch.from_numpy(sources)
                sets = torch.cat([e[s[:, k], k] for k in range(PARTS)], 1)  # materialised, float32
                return class_scores((sets @ w.T).double().numpy(), np.full(len(s), target))

        fast = fill_class(target, refs, nb, labels, tables, settings["per_class"], settings["tau"],
                          settings["neighbors"])
        slow = fill_class_dense(target, refs, nb, labels, dense, settings["per_class"], settings["tau"],
                                settings["neighbors"])
        same &= np.array_equal(fast.sources, slow.sources) and np.array_equal(fast.refs, slow.refs)
    return bool(same)


def index_figures(store: Path, k: int, kinds: tuple[str, ...]) -> dict:
    """Build each index kind over the store: seconds (an approximate one's nprobe tuning
    included), bytes, recall against exact search, search time per query."""
    pool = PartStore(store)
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(len(pool), size=min(len(pool), 128), replace=False))
    out = {}
    for kind in kinds:
        t0 = time.perf_counter()
        index = PartNeighbours.build(pool, kind, use_gpu=False)
        untuned = search_recall(index, queries, 0, k) if kind != "flat" else 1.0
        index.tune(queries, k)
        seconds = time.perf_counter() - t0
        folder = store / f"index-{kind}"
        size = index.write(folder)
        t0 = time.perf_counter()
        recall = search_recall(index, queries, 0, k)
        out[kind] = {"build_s": round(seconds, 2), "mb": round(size / 2**20, 1),
                     "recall": round(recall, 4), "search_ms_per_query": round(
                         1000 * (time.perf_counter() - t0) / len(queries), 2)}
        if kind != "flat":
            out[kind].update({"nlist": index.nlist, "nprobe": index.nprobe,
                              f"recall_at_nprobe_{NPROBE}": round(untuned, 4)})
        shutil.rmtree(folder)
        del index
    return out


def measure(classes: int, work: Path, settings: dict, actors_list: list[int],
            check_brute_force: bool, index_kinds: tuple[str, ...]) -> dict:
    from ghns.raykit import ensure_ray

    t0 = time.perf_counter()
    emb, labels, centres = problem(classes)
    net = centre_filternet(emb, labels, centres)
    run_dir = work / f"c{classes}"
    (run_dir / "train-parts").mkdir(parents=True, exist_ok=True)
    from ghns.rundir import RunDir

    run = RunDir(run_dir)
    write_embeddings(run.embeddings, pd.DataFrame({"image_id": np.arange(len(labels)) + 1,
                                                   "split": "train", "label": labels}), emb)
    save_checkpoint(run.filternet, net, {"hidden": 0, "n_parts": PARTS, "embedding_dim": D,
                                         "num_classes": classes})
    made = time.perf_counter() - t0
    out = {"classes": classes, "images": len(labels), "problem_s": round(made, 1)}
    if check_brute_force:
        out["same_as_brute_force"] = brute_force_check(emb, labels, net, settings, classes)
    del emb
    store = run_dir / "store"
    lookup = prepare_store(run, store, classes, settings)
    out.update({"store_mb": lookup["store_mb"], "store_s": lookup["store_s"],
                "centroids_mb": lookup["centroids_mb"], "centroids_s": lookup["build_s"]})
    cfg = Config(run_dir=str(run_dir), dataset="imagefolder", root=str(run_dir))
    ensure_ray(cfg)
    banks = {}
    for actors in actors_list:
        bank = run_dir / f"bank{actors}"
        wall, stats = run_actors(cfg, store, run.filternet, bank, classes, actors, settings)
        banks[actors] = bank
        if not check_brute_force:
            shutil.rmtree(bank)
        out[f"actors_{actors}"] = {
            "wall_s": round(wall, 1), "wall_s_per_class": round(wall / classes, 4),
            "seconds_per_class": round(float(stats["seconds"].sum()) / classes, 4),
            "peak_rss_mb": round(float(stats["peak_rss_mb"].max()), 1),
            "kept": int(stats["kept"].sum()), "candidates": int(stats["candidates"].sum()),
            "candidates_per_s": round(float(stats["candidates"].sum() / stats["seconds"].sum())),
        }
        print(f"{classes} classes, {actors} actor(s): {out[f'actors_{actors}']}", file=sys.stderr)
    if len(banks) > 1 and check_brute_force:  # the smallest size (a bank is 6 KB a negative)
        first, *rest = banks.values()
        out["same_bank_across_actors"] = all(same_shards(first, b) for b in rest)
    out["index"] = index_figures(store, settings["neighbors"], index_kinds)
    print(f"{classes} classes: index {out['index']}", file=sys.stderr)
    shutil.rmtree(run_dir)
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [r["classes"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for actors, style in ((1, "o-"), (2, "s--")):
        key = f"actors_{actors}"
        if all(key in r for r in results):
            a.plot(classes, [1000 * r[key]["seconds_per_class"] for r in results], style,
                   label=f"{actors} actor(s), in the actor")
            a.plot(classes, [1000 * r[key]["wall_s_per_class"] for r in results], style, alpha=0.4,
                   label=f"{actors} actor(s), wall")
            b.plot(classes, [r[key]["peak_rss_mb"] for r in results], style, label=f"{actors} actor(s)")
    b.plot(classes, [r["index"]["flat"]["mb"] for r in results], "^:", label="flat index (every-class rule)")
    b.plot(classes, [r["store_mb"] for r in results], "v:", label="embedding store (on disk)")
    a.set(xscale="log", xlabel="classes (30 images each)", ylabel="ms per class", title="time per class")
    b.set(xscale="log", yscale="log", xlabel="classes (30 images each)", ylabel="MB", title="memory")
    for ax in (a, b):
        ax.set_xticks(classes, [str(c) for c in classes])
        ax.minorticks_off()
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", default="200,1000,5000")
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--plot", default=None, help="write the plot here (PNG)")
    ap.add_argument("--replot", default=None, help="only redraw --plot from this JSON (a last line)")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text())["sizes"], Path(args.plot))
        return
    cfg = Config()
    settings = {"per_class": cfg.per_class, "tau": cfg.tau, "neighbors": cfg.neighbors,
                "max_part_similarity": cfg.max_part_similarity, "donor_classes": cfg.donor_classes,
                "band_quantile": cfg.band_quantile, "neighbour_index": cfg.neighbour_index}
    sizes = [int(c) for c in args.classes.split(",")]
    actors = [int(a) for a in args.actors.split(",")]
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, classes in enumerate(sizes):
            kinds = ("flat", "ivf", "ivfpq") if i == len(sizes) - 1 else ("flat",)  # approximate: largest only
            results.append(measure(classes, Path(tmp), settings, actors, check_brute_force=i == 0,
                                   index_kinds=kinds))
    if args.plot:
        plot(results, Path(args.plot))
    one = [r["actors_1"] for r in results] if all("actors_1" in r for r in results) else \
        [r[f"actors_{actors[0]}"] for r in results]
    summary = {
        "bench": "generate_scale", "settings": settings, "per_class_images": PER, "dim": D,
        "classes": sizes, "images": [r["images"] for r in results],
        "seconds_per_class": [r["seconds_per_class"] for r in one],
        "wall_s_per_class": [r["wall_s_per_class"] for r in one],
        "peak_rss_mb": [r["peak_rss_mb"] for r in one],
        "index_mb": [r["index"]["flat"]["mb"] for r in results],
        "seconds_per_class_ratio": round(one[-1]["seconds_per_class"] / one[0]["seconds_per_class"], 2),
        "peak_rss_ratio": round(one[-1]["peak_rss_mb"] / one[0]["peak_rss_mb"], 2),
        "same_bank": bool(results[0].get("same_as_brute_force", True)
                          and results[0].get("same_bank_across_actors", True)),
        "total_s": round(time.perf_counter() - t0, 1), "sizes": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
