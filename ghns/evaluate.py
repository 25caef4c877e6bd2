"""The evaluate stage: per-classifier scores on val and test (cached in ``scores/``), the fusion
chosen on val (``ghns.fusion``), and the report (``report.json``, ``report.md``, ``figures/``)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ghns.data.catalog import Catalog
from ghns.fusion import Fusion, choose_fusion, confused_pairs, topk_accuracy
from ghns.rejection import REJECT_ACCEPT, Calibration, confidence, nearest_set_similarity, reject_threshold
from ghns.rundir import RunDir, atomic_path, atomic_write_text, stage_runner
from ghns.train_parts.table import read_embeddings

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)
IMAGE_MODELS = ("original", "object")


@torch.no_grad()
def image_scores(cfg: Config, run: RunDir, catalog: Catalog, models: dict[str, str],
                 splits: tuple[str, ...] = ("val", "test")) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {name: (N, C) softmax scores}}`` of the image classifiers in ``models`` (name ->
    file), each from the pooled features averaged over the image and its mirror image (as they
    trained and as their probe saw them), in catalog order.

    The frozen blocks' outputs come from the run's trunk outputs (``ghns.trunks``: made by
    train-final, or here where missing), so only the blocks after them and the heads run.
    Classifiers whose later blocks are equal too (the seed-ensemble copies that kept their probe
    start) share the pooled features, and only their heads differ."""
    from ghns.models.backbones import cpu_layout
    from ghns.train_final.train import load_image_classifier
    from ghns.trunks import ensure_trunks, read_trunks

    out: dict[str, dict[str, np.ndarray]] = {split: {} for split in splits}
    pooled: dict[tuple[str, str, str], torch.Tensor] = {}
    device = torch.device("cpu")
    for name, path in models.items():
        model, settings = load_image_classifier(path)
        folder = ensure_trunks(cfg, run, catalog, model, settings, settings["crop"], splits)
        model.to(device).eval()
        layout = cpu_layout(model, device)
        for split in splits:
            key = (str(folder), split, model.tail_digest())
            if key not in pooled:
                data = read_trunks(folder, split, catalog.split(split)["image_id"].to_numpy(), model.trunk_digest())
                pooled[key] = torch.cat([model.flip_averaged_pooled(
                    data["x"][i:i + 128].float().contiguous(memory_format=layout),
                    data["xf"][i:i + 128].float().contiguous(memory_format=layout), cached=True)
                    for i in range(0, len(data["x"]), 128)]) if len(data["x"]) else torch.zeros(0, model.mean.numel())
            out[split][name] = model.head(pooled[key])[1].float().softmax(1).numpy()
    return out


def parts_scores(path: Path, embeddings: np.ndarray) -> np.ndarray:
    from ghns.train_final.parts import load_parts_classifier

    model = load_parts_classifier(path)
    with torch.no_grad():
        return model(torch.from_numpy(embeddings.reshape(len(embeddings), -1)))[1].softmax(1).numpy()


def scores_stamp(run: RunDir, names: list[str]) -> dict[str, Any]:
    """What the cached scores were computed from: the records of the stages that made the
    catalog, the boxes, the embeddings and the classifiers (each rerun changes its record)."""
    stages = run.stages()
    return {"models": sorted(names), **{k: stages.get(k) for k in ("catalog", "localize", "train-parts", "train-final")}}


def cached_scores(run: RunDir, stamp: dict[str, Any]) -> dict[str, dict[str, np.ndarray]] | None:
    """The scores of an earlier evaluate of the same classifiers (a fusion change costs seconds)."""
    stamp_file = run.scores / "stamp.json"
    files = [run.scores / f"{split}.npz" for split in ("val", "test")]
    if not (stamp_file.is_file() and all(f.is_file() for f in files)):
        return None
    if json.loads(stamp_file.read_text()) != json.loads(json.dumps(stamp)):
        return None
    log.info("evaluate: scores of these classifiers are cached (%s)", run.scores)
    return {split: dict(np.load(f)) for split, f in zip(("val", "test"), files)}


def compute_scores(cfg: Config, run: RunDir, catalog: Catalog, force: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {"image_id", "label", <model>: (N, C) scores}}`` for val and test, cached in
    ``scores/`` with the stamp of what made them (``scores_stamp``); ``force`` recomputes them."""
    from ghns.train_final.stage import model_names

    names = model_names(cfg)
    stamp = scores_stamp(run, names)
    cached = None if force else cached_scores(run, stamp)
    if cached is not None:
        return cached
    (run.scores / "stamp.json").unlink(missing_ok=True)
    image_models = {n: str((run.train_final / f"{n}.pt").resolve()) for n in names if not n.startswith("parts")}
    scored = image_scores(cfg, run, catalog, image_models)
    meta, emb = read_embeddings(run.embeddings)
    index = {int(i): k for k, i in enumerate(meta["image_id"])}
    out = {}
    run.scores.mkdir(parents=True, exist_ok=True)
    for split in ("val", "test"):
        rows = catalog.split(split)
        ids = rows["image_id"].to_numpy()
        data = {"image_id": ids, "label": rows["label"].to_numpy(), **scored[split]}
        part_emb = emb[[index[int(i)] for i in ids]]
        for n in names:
            if n.startswith("parts"):
                data[n] = parts_scores(run.train_final / f"{n}.pt", part_emb)
        with atomic_path(run.scores / f"{split}.npz", suffix=".npz") as tmp:
            np.savez_compressed(tmp, **data)
        out[split] = data
    atomic_write_text(run.scores / "stamp.json", json.dumps(stamp, sort_keys=True))
    return out


def build_report(cfg: Config, run: RunDir, catalog: Catalog, scores: dict[str, dict[str, np.ndarray]],
                 known: KnownSets | None = None) -> dict[str, Any]:
    val, test, step = scores["val"], scores["test"], cfg.fusion_step

    def single(name: str) -> dict[str, float]:
        return {f"top{k}": round(topk_accuracy(test[name], test["label"], k), 2) for k in (1, 3, 5)} | {
            "val_top1": round(topk_accuracy(val[name], val["label"]), 2)}

    def fused(names: tuple[str, ...], fixed: tuple[float, ...] | None = None) -> dict[str, Any]:
        if fixed is None:
            fusion = choose_fusion([val[n] for n in names], val["label"], cfg.fusion_rule, step)
        else:  # given in the config (e.g. by a fusion sweep): Eq. 11 at them, only reported
            fusion = Fusion("grid", tuple(fixed))
        val_acc = topk_accuracy(fusion([val[n] for n in names]), val["label"])
        f = fusion([test[n] for n in names])
        return {**fusion.describe(), "val_top1": round(val_acc, 2),
                **{f"top{k}": round(topk_accuracy(f, test["label"], k), 2) for k in (1, 3, 5)}}

    main = ("original", "object", "parts")
    rows = {n: single(n) for n in ("original", "object", "parts", "parts_noneg")}
    full = fused(main, cfg.resolved_fusion_weights())
    full_val = Fusion.from_dict(full)([val[n] for n in main])  # the fused val scores, for the reject threshold
    table6 = {"original": rows["original"], "object": rows["object"], "parts": rows["parts"],
              "original + object": fused(("original", "object")),
              "original + parts": fused(("original", "parts")),
              "object + parts": fused(("object", "parts")),
              "original + object + parts": full}
    report: dict[str, Any] = {
        "dataset": catalog.dataset, "backbone": cfg.resolved_backbone(),
        "test_images": int(len(test["label"])), "val_images": int(len(val["label"])),
        "accuracy": {"original": rows["original"]["top1"], "object": rows["object"]["top1"],
                     "parts": rows["parts"]["top1"], "fused": full["top1"],
                     "fused_without_negatives": fused(("original", "object", "parts_noneg"))["top1"]},
        "top3": {"fused": full["top3"]}, "top5": {"fused": full["top5"]},
        # the contract's three numbers (sum 1) for either rule; "fusion" says which rule they weigh
        "fusion_weights": list(Fusion.from_dict(full).weights),
        "fusion": {k: full[k] for k in ("rule", "weights", "temperatures") if k in full},
        "fusion_from": "config" if cfg.fusion_weights else (
            f"val grid, step {step}" if cfg.fusion_rule == "grid" else "val log-loss, per classifier"),
        # how optimistic the val accuracy at the chosen weights is (positive: val above test)
        "fusion_val_test_gap": round(full["val_top1"] - full["top1"], 2),
        "table6": table6,
        "parts_without_negatives": rows["parts_noneg"],
        # ghns predict --reject: "none of these" below the score that 95% of known val images reach
        "reject_threshold": reject_settings(known or KnownSets.of(run), confidence(full_val)),
    }
    ensemble = [n for n in scores["test"] if n.startswith("original_seed")]
    if ensemble:
        members = ("original", *sorted(ensemble))
        report["seed_ensemble"] = {"members": len(members), **fused(members),
                                   "member_top1": [single(n)["top1"] for n in members]}
        report["accuracy"]["seed_ensemble"] = report["seed_ensemble"]["top1"]
    report["confused_pairs"] = confused_pairs(Fusion.from_dict(full)([test[n] for n in main]),
                                              test["label"], catalog.classes)
    report["seconds"] = stage_seconds(run)
    if run.generate_json.is_file():
        gen = json.loads(run.generate_json.read_text())
        report["hard_negatives"] = {"kept": gen["kept"], "per_class": gen["per_class"],
                                    "tau": gen["settings"]["tau"], "pass_rate": gen["pass_rate"]}
    return report


@dataclass(frozen=True)
class KnownSets:
    """The train images' part embeddings (N, P, D) and each val image's part-set similarity to
    them (``nearest_set_similarity``): read and computed once per evaluate."""

    train: np.ndarray
    val_similarity: np.ndarray

    @classmethod
    def of(cls, run: RunDir) -> "KnownSets":
        meta, emb = read_embeddings(run.embeddings)
        split = meta["split"].to_numpy()
        train = emb[split == "train"]
        return cls(train, nearest_set_similarity(emb[split == "val"], train))


def reject_settings(known: KnownSets, val_fused: np.ndarray) -> dict[str, Any]:
    """What ``ghns predict --reject`` reads: the threshold of the fused score and of the combined
    score (``ghns.rejection``) that ``REJECT_ACCEPT`` of known val images reach, and the
    calibration the combined score needs (quantiles of known val fused scores and similarities)."""
    similarity = known.val_similarity
    cal = Calibration.fit(val_fused, similarity)
    combined = cal.combined(val_fused, similarity)
    return {"fused": round(reject_threshold(val_fused), 6), "combined": round(reject_threshold(combined), 6),
            "accept_val": REJECT_ACCEPT, "calibration": cal.to_dict()}


ARMS = (("parts", "with_negatives"), ("parts_noneg", "without_negatives"))


def rejection_confidences(cfg: Config, run: RunDir, catalog: Catalog, scores: dict[str, dict[str, np.ndarray]],
                          report: dict[str, Any], force: bool = False,
                          known: KnownSets | None = None) -> dict[str, dict] | None:
    """``{arm: confidences}`` (``ghns.rejection.confidences``: every rejection image's parts, fused,
    similarity and combined score) with and without hard negatives; None without unknown images."""
    from ghns.predict import rejection_inputs
    from ghns.rejection import confidences
    from ghns.train_final.parts import load_parts_classifier, parts_softmax
    from ghns.train_final.stage import model_names

    stamp = {**scores_stamp(run, model_names(cfg)), "kind": "rejection"}
    inputs = rejection_inputs(run, catalog, stamp, force, progress=not cfg.quiet)
    if inputs is None:
        return None
    val = scores["val"]
    fusions = {"parts": Fusion.from_dict(report["table6"]["original + object + parts"]),  # the report's own
               "parts_noneg": choose_fusion([val["original"], val["object"], val["parts_noneg"]], val["label"],
                                            cfg.fusion_rule, cfg.fusion_step)}  # as fused_without_negatives
    known = known or KnownSets.of(run)
    similarity = {name: nearest_set_similarity(d["embeddings"], known.train) for name, d in inputs.items()}
    out = {}
    for name, key in ARMS:
        model = load_parts_classifier(run.train_final / f"{name}.pt")
        fusion = fusions[name]
        cal = Calibration.fit(confidence(fusion([val["original"], val["object"], val[name]])), known.val_similarity)

        def scored(_: str, emb: np.ndarray, model=model) -> np.ndarray:
            return parts_softmax(model, emb)
        out[key] = confidences(inputs, scored, fusion, similarity, cal)
    return out


def rejection_report(cfg: Config, run: RunDir, catalog: Catalog, scores: dict[str, dict[str, np.ndarray]],
                     report: dict[str, Any], force: bool = False,
                     known: KnownSets | None = None) -> dict[str, Any] | None:
    """AUROC of known test images against each unknown set (``ghns.rejection``) for each score,
    with and without hard negatives."""
    from ghns.rejection import rejection_figures

    conf = rejection_confidences(cfg, run, catalog, scores, report, force, known)
    if conf is None:
        return None
    out: dict[str, Any] = {key: rejection_figures(c) for key, c in conf.items()}
    out["method"] = ("AUROC of known test images against each unknown set, by the maximum softmax score "
                     "(parts, fused), the nearest train image's part-set similarity (similarity) and the "
                     "product of their known-val p-values (combined)")
    for kind, fig in out["with_negatives"].items():
        log.info("evaluate: %s AUROC (known test vs %d unknown): parts %.4f, fused %.4f, similarity %.4f, "
                 "combined %.4f (without hard negatives: fused %.4f, combined %.4f)", kind, fig["images"],
                 fig["auroc"]["parts"], fig["auroc"]["fused"], fig["auroc"]["similarity"],
                 fig["auroc"]["combined"], out["without_negatives"][kind]["auroc"]["fused"],
                 out["without_negatives"][kind]["auroc"]["combined"])
    return out


def stage_seconds(run: RunDir) -> dict[str, float]:
    from ghns.rundir import STAGES

    stages = run.stages()
    return {name: stages[name].get("seconds") for name in STAGES if name in stages}


def render_markdown(report: dict[str, Any]) -> str:
    acc = report["accuracy"]
    lines = [f"# GHNS report: {report['dataset']}, {report['backbone']}", "",
             f"Test top-1 (%) on {report['test_images']} images; every choice made on "
             f"{report['val_images']} validation images.", "",
             "| classifier | test top-1 | test top-3 | test top-5 | val top-1 | fusion |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in report["table6"].items():
        w = ", ".join(f"{x:g}" for x in row.get("weights", [])) or (
            "T = " + ", ".join(f"{x:.3g}" for x in row["temperatures"]) if "temperatures" in row else "-")
        lines.append(f"| {name} | {row['top1']} | {row['top3']} | {row['top5']} | {row['val_top1']} | {w} |")
    lines += ["", f"- fused without hard negatives (parts classifier without the n+ term): "
                  f"**{acc['fused_without_negatives']}**"]
    if "seed_ensemble" in report:
        se = report["seed_ensemble"]
        lines.append(f"- seed-ensemble control ({se['members']} original-image classifiers, fused the "
                     f"same way): **{se['top1']}** (members {se['member_top1']})")
    fusion = report["fusion"]
    chosen = (f"weights {fusion['weights']}" if "weights" in fusion
              else f"temperatures {fusion['temperatures']}")
    lines += [f"- fusion ({fusion['rule']}) of original, object, parts: {chosen} "
              f"({report['fusion_from']}); fused val top-1 minus test top-1 at them: "
              f"{report.get('fusion_val_test_gap')}", ""]
    if report.get("confused_pairs"):
        lines += ["Most confused class pairs (fused, test):", ""]
        lines += [f"- {p['classes'][0]} / {p['classes'][1]}: {p['errors']}" for p in report["confused_pairs"]]
    lines += ["", "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items())]
    return "\n".join(lines) + "\n"


def confusion_figure(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = report.get("confused_pairs") or []
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(3, len(pairs)) + 1))
    ax.barh([f"{p['classes'][0]} / {p['classes'][1]}" for p in pairs][::-1],
            [p["errors"] for p in pairs][::-1], color="#c44")
    ax.set_xlabel("test errors between the two classes (fused)")
    ax.set_title("Most confused class pairs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@stage_runner("evaluate")
def run_evaluate(cfg: Config, run: RunDir, fp: dict[str, Any], force: bool) -> dict[str, Any]:
    """The evaluate stage; returns report.json."""
    catalog = Catalog.read(run.catalog)
    start = time.perf_counter()
    with run.stage("evaluate", fp):  # committed only once every file below is in place
        scores = compute_scores(cfg, run, catalog, force)
        known = KnownSets.of(run)  # read and computed once, for the threshold and the figures
        report = build_report(cfg, run, catalog, scores, known)
        rejection = rejection_report(cfg, run, catalog, scores, report, force, known)
        if rejection:
            report["rejection"] = rejection
        report["seconds"]["evaluate"] = round(time.perf_counter() - start, 3)
        confusion_figure(report, run.figures / "confused_pairs.png")
        atomic_write_text(run.report_md, render_markdown(report))
        atomic_write_text(run.report_json, json.dumps(report, indent=2))
    return report
