"""The whole pipeline on a tiny synthetic run: report keys, resumption after an interrupted
stage, predict."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tiny_run):
    return tiny_run


def test_report_has_the_contract_keys(finished):
    report = json.loads((finished / "report.json").read_text())
    assert {"dataset", "backbone", "accuracy", "fusion_weights", "fusion", "fusion_from",
            "seconds"} <= set(report)
    assert {"original", "object", "parts", "fused", "fused_without_negatives",
            "seed_ensemble"} <= set(report["accuracy"])
    assert len(report["fusion_weights"]) == 3 and abs(sum(report["fusion_weights"]) - 1) < 1e-3
    assert report["fusion"]["rule"] == "loglinear"  # the default
    assert len(report["fusion"]["temperatures"]) == 3 and min(report["fusion"]["temperatures"]) > 0
    assert list(report["seconds"]) == ["catalog", "localize", "train-parts", "generate", "train-final", "evaluate"]
    assert set(report["table6"]) >= {"original + parts", "original + object + parts"}
    assert (finished / "report.md").read_text().startswith("# GHNS report: synthetic")
    assert (finished / "figures" / "confused_pairs.png").is_file()
    for split in ("val", "test"):
        assert (finished / "scores" / f"{split}.npz").is_file()


def test_pipeline_resumes_an_interrupted_stage(cli, finished, tmp_path):
    import shutil

    run = tmp_path / "run"  # a copy: the session's run stays as other tests read it
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("ray"))
    from tests.conftest import stop_train_final_after_original

    stage3 = run / "train-final"
    kept, kept_mtime = stop_train_final_after_original(run)
    code, out, err = cli("pipeline", "--run-dir", run)
    assert code == 0, err
    assert "localize: done already" in err and "generate: done already" in err
    assert "train-final: original done already" in err
    assert kept.stat().st_mtime_ns == kept_mtime and (stage3 / "object.pt").is_file()
    assert "# GHNS report" in out


def test_predict_prints_top_classes_and_reports_bad_images(cli, finished, tmp_path):
    from ghns.data.catalog import Catalog

    images = Catalog.read(finished / "catalog.parquet").split("test")["path"].iloc[:2].tolist()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    code, out, err = cli("predict", "--run-dir", finished, images[0], bad, images[1])
    assert code == 1
    assert err.strip().splitlines() == [f"error: {bad}: unreadable: cannot identify image file '{bad}'"]
    for path in images:
        assert path in out
    scores = [float(line.split()[0]) for line in out.splitlines() if line.startswith("  ")]
    assert len(scores) == 8 and all(0 <= s <= 1 for s in scores)  # 4 classes x 2 images


def test_a_fusion_change_reuses_the_cached_scores(finished, tmp_path, cli):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("ray"))
    before = {s: (run / "scores" / f"{s}.npz").stat().st_mtime_ns for s in ("val", "test")}
    code, out, err = cli("evaluate", "--run-dir", run, "--fusion-rule", "grid")
    assert code == 0, err
    report = json.loads((run / "report.json").read_text())
    assert report["fusion"]["rule"] == "grid" and report["fusion_from"].startswith("val grid")
    assert abs(sum(report["fusion"]["weights"]) - 1) < 1e-9
    assert "scores of these classifiers are cached" in err
    assert {s: (run / "scores" / f"{s}.npz").stat().st_mtime_ns for s in ("val", "test")} == before


def test_rejection_figures_recomputed_from_the_cached_inputs(finished):
    """report.json's near-miss AUROC equals a direct computation from the cached inputs, the
    saved parts classifier and the reported fusion; the threshold accepts 95% of known val."""
    import numpy as np

    from ghns.fusion import Fusion
    from ghns.train_final.parts import load_parts_classifier
    from ghns.stats import auroc

    report = json.loads((finished / "report.json").read_text())
    rej = report["rejection"]["with_negatives"]["near_miss"]
    assert rej["images"] == 8 and rej["known_images"] == report["test_images"]  # odd-numbered of 16
    assert set(rej["val_auroc"]) == {"parts", "fused", "similarity", "combined"}
    flat = dict(np.load(finished / "rejection" / "inputs.npz"))
    model = load_parts_classifier(finished / "train-final" / "parts.pt")
    fusion = Fusion.from_dict(report["table6"]["original + object + parts"])
    conf = {}
    for name in ("known", "near_miss"):
        emb = flat[f"{name}/embeddings"]
        import torch

        with torch.no_grad():
            p = model(torch.from_numpy(emb.reshape(len(emb), -1)))[1].softmax(1).numpy()
        fused = fusion([flat[f"{name}/original"], flat[f"{name}/object"], p])
        conf[name] = (p.max(1), fused.max(1))
    assert rej["auroc"]["parts"] == pytest.approx(auroc(conf["known"][0], conf["near_miss"][0]), abs=1e-4)
    assert rej["auroc"]["fused"] == pytest.approx(auroc(conf["known"][1], conf["near_miss"][1]), abs=1e-4)
    # the part-set similarity, by a double loop over train images (stage-1 embeddings of train)
    from ghns.train_parts.table import read_embeddings

    meta, emb = read_embeddings(finished / "embeddings.parquet")
    train = emb[(meta["split"] == "train").to_numpy()]

    def similarity(sets):
        return np.array([max(np.mean([s[k] @ t[k] for k in range(len(s))]) for t in train) for s in sets])
    sim = {name: similarity(flat[f"{name}/embeddings"]) for name in ("known", "near_miss")}
    assert rej["auroc"]["similarity"] == pytest.approx(auroc(sim["known"], sim["near_miss"]), abs=1e-4)
    # the reject thresholds: chosen on known val scores alone (the pipeline's own val scores)
    from ghns.rejection import Calibration

    val = dict(np.load(finished / "scores" / "val.npz"))
    fused_val = fusion([val["original"], val["object"], val["parts"]]).max(1)
    settings = report["reject_threshold"]
    assert (fused_val >= settings["fused"]).mean() >= 0.95
    sim_val = similarity(emb[(meta["split"] == "val").to_numpy()])
    cal = Calibration.from_dict(settings["calibration"])
    assert (cal.combined(fused_val, sim_val) >= settings["combined"] - 1e-6).mean() >= 0.95
    combined = {n: cal.combined(conf[n][1], sim[n]) for n in ("known", "near_miss")}
    assert rej["auroc"]["combined"] == pytest.approx(auroc(combined["known"], combined["near_miss"]), abs=2e-3)


def test_predict_reject_answers_none_of_these_below_the_threshold(finished, cli, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("ray", "trunks"))
    from ghns.data.catalog import Catalog

    image = Catalog.read(run / "catalog.parquet").split("test")["path"].iloc[0]
    report = json.loads((run / "report.json").read_text())
    for score in ("combined", "fused"):  # both scores are at most 1
        for threshold, rejected in ((1.01, True), (0.0, False)):
            report["reject_threshold"][score] = threshold
            (run / "report.json").write_text(json.dumps(report))
            code, out, err = cli("predict", "--run-dir", run, "--reject", "--reject-score", score, image)
            assert code == 0, err
            assert ("none of these" in out) == rejected
            assert (f"{score} score" in out) == rejected
    code, out, _ = cli("predict", "--run-dir", run, image)  # without --reject: never
    assert code == 0 and "none of these" not in out
    del report["reject_threshold"]["combined"]  # a report of an earlier version: one line, what to do
    (run / "report.json").write_text(json.dumps(report))
    code, out, err = cli("predict", "--run-dir", run, "--reject", image)
    assert code == 2 and "ghns evaluate --force" in err and "Traceback" not in err
