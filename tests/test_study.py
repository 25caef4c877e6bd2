"""``ghns study``: the summary on hand-made scores, and the command on the tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ghns.stats import mcnemar, paired_bootstrap
from ghns.study import BankSpec, Job, parse_grid, plan, summarize_study


def one_hot(pred, classes):
    out = np.full((len(pred), classes), 0.01)
    out[np.arange(len(pred)), pred] = 0.9
    return out


def hand_made(seeds=(0, 1, 2), n=40, classes=4, seed=0):
    """Run scores where the image classifiers are uninformative (uniform), so the fused
    prediction is the parts prediction; "with" is right more often than "without"."""
    rng = np.random.default_rng(seed)
    labels = {s: rng.integers(0, classes, n) for s in ("val", "test")}
    ids = {"val": np.arange(100, 100 + n), "test": np.arange(500, 500 + n)}
    flat = np.full((n, classes), 1.0 / classes)
    run_scores = {s: {"image_id": ids[s], "label": labels[s], "original": flat, "object": flat}
                  for s in ("val", "test")}
    main = BankSpec(0.5, 10)
    jobs, truth = {}, {}
    for s in seeds:
        for arm, p_right in (("without", 0.6), ("with", 0.8)):
            right = {sp: rng.random(n) < p_right for sp in ("val", "test")}
            pred = {sp: np.where(right[sp], labels[sp], (labels[sp] + 1) % classes) for sp in right}
            name = f"without-s{s}" if arm == "without" else f"with-{main.key}-s{s}"
            jobs[name] = {"image_id": np.r_[ids["test"][::-1], ids["val"]],  # any order: aligned by id
                          "scores": np.r_[one_hot(pred["test"], classes)[::-1], one_hot(pred["val"], classes)],
                          "bank_size": np.array(7)}
            truth[name] = pred["test"] == labels["test"]
    return jobs, run_scores, main, truth, labels["test"]


def test_summary_on_hand_made_predictions():
    seeds = [0, 1, 2]
    jobs, run_scores, main, truth, labels = hand_made(seeds)
    result = summarize_study(jobs, run_scores, seeds, [main], main, ["a", "b", "c", "d"], n_boot=500)
    with_m = np.stack([truth[f"with-{main.key}-s{s}"] for s in seeds])
    without_m = np.stack([truth[f"without-s{s}"] for s in seeds])
    assert result["seeds"] == seeds
    assert result["arms"]["with"]["parts"] == [round(100 * r.mean(), 2) for r in with_m]
    assert result["arms"]["without"]["parts"] == [round(100 * r.mean(), 2) for r in without_m]
    # uninformative image classifiers: fusion cannot change the parts prediction
    assert result["arms"]["with"]["fused"] == result["arms"]["with"]["parts"]
    boot = paired_bootstrap(with_m, without_m, n_boot=500)
    assert result["paired"]["parts"]["mean"] == boot["mean"]
    assert result["paired"]["parts"]["ci95"] == boot["ci95"]
    assert result["paired"]["parts"]["mcnemar_p"] == pytest.approx(mcnemar(with_m, without_m)["p"], abs=1e-6)
    assert result["summary"]["with"]["parts"]["mean"] == pytest.approx(100 * with_m.mean(1).mean(), abs=0.01)
    assert result["grid"][0]["bank_size"] == 7
    errors = result["confused_pairs"]
    assert errors and set(errors[0]) == {"classes", "with", "without"}
    # pooled errors of both arms between the top pair, per seed
    a, b = errors[0]["classes"]
    assert errors[0]["with"] + errors[0]["without"] > 0
    json.dumps(result)  # the contract is JSON


def test_plan_and_grid_parsing():
    banks = [BankSpec(0.5, 10), BankSpec(0.5, 50)]
    jobs = plan([0, 1], banks)
    assert [j.name for j in jobs] == ["without-s0", "without-s1", "with-tau0.5-n10-s0",
                                      "with-tau0.5-n10-s1", "with-tau0.5-n50-s0", "with-tau0.5-n50-s1",
                                      "mined-s0", "mined-s1"]
    assert [j.kind for j in jobs] == ["without"] * 2 + ["generated"] * 4 + ["mined"] * 2
    assert Job(3, None).name == "without-s3"
    assert len(plan([0], banks, mined=False)) == 3
    online = plan([0, 1], banks[:1], online=banks[0])
    assert [j.name for j in online][-2:] == ["online-s0", "online-s1"]
    assert {j.kind for j in online[-2:]} == {"generated_online"} and online[-1].bank == banks[0]
    assert parse_grid("10, 50,150", int, "per_class_grid") == [10, 50, 150]
    assert parse_grid(None, float, "tau_grid") == []
    from ghns.errors import ConfigError

    with pytest.raises(ConfigError, match="'tau_grid' must be a comma-separated list"):
        parse_grid("0.5,high", float, "tau_grid")


@pytest.mark.slow
def test_study_on_the_tiny_run(cli, tiny_run, tmp_path):
    out = tmp_path / "study"
    code, stdout, err = cli("study", "--run-dir", tiny_run, "--seeds", "2", "--per-class-grid", "2,5",
                            "--out", out)
    assert code == 0, err
    result = json.loads((out / "study.json").read_text())
    assert result["seeds"] == [0, 1]
    for arm in ("with", "without"):
        for which in ("parts", "fused"):
            assert len(result["arms"][arm][which]) == 2
    for which in ("parts", "fused"):
        p = result["paired"][which]
        assert p["ci95"][0] <= p["mean"] <= p["ci95"][1] and 0 <= p["mcnemar_p"] <= 1
    assert [g["per_class"] for g in result["grid"]] == [5, 2] or {g["per_class"] for g in result["grid"]} == {2, 5}
    assert (out / "study.png").stat().st_size > 0 and "paired difference" in stdout
    jobs = sorted(p.name for p in (out / "jobs").glob("*/*.npz"))
    assert len(jobs) == 2 + 2 * 2 + 2  # without x 2 seeds, with x 2 settings x 2 seeds, mined x 2
    # the contract: each arm against "without", top-1 and the near-miss AUROC (synthetic)
    for arm in ("generated", "mined"):
        for metric in ("parts", "fused", "near_miss_auroc"):
            v = result["vs_without"][arm][metric]
            assert v["ci95"][0] <= v["mean"] <= v["ci95"][1]
        assert "open_set_auroc" not in result["vs_without"][arm]  # no held-out classes: absent
    for per_seed in result["rejection"]["without"]["near_miss_auroc"].values():
        assert len(per_seed) == 2 and all(0 <= a <= 1 for a in per_seed)
    # resumable: a second call trains nothing and gives the same result
    code, _, err = cli("study", "--run-dir", tiny_run, "--seeds", "2", "--per-class-grid", "2,5", "--out", out)
    assert code == 0 and "all 8 classifiers trained already" in err
    assert json.loads((out / "study.json").read_text())["arms"] == result["arms"]
    code, _, err = cli("study", "--run-dir", tiny_run, "--seeds", "1")
    assert code == 2 and "--seeds" in err


@pytest.mark.slow
def test_study_with_part_networks_training_adds_the_online_arm(cli, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"  # a copy: this study adds the rejection images' part crops to the run
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("ray"))
    out = tmp_path / "study-networks"
    code, stdout, err = cli("study", "--run-dir", run, "--seeds", "2", "--part-networks-lr", "0.01",
                            "--parts-epochs", "1", "--out", out)
    assert code == 0, err
    result = json.loads((out / "study.json").read_text())
    assert set(result["vs_without"]) == {"generated", "generated_online", "mined"}
    for arm in ("generated", "generated_online", "mined"):
        for metric in ("parts", "fused", "near_miss_auroc", "near_miss_auroc_parts"):
            v = result["vs_without"][arm][metric]
            assert v["ci95"][0] <= v["mean"] <= v["ci95"][1]
    jobs = {p.stem: dict(np.load(p)) for p in (out / "jobs").glob("*/*.npz")}
    assert len(jobs) == 4 * 2 and jobs["online-s0"]["bank_size"] > 0 and jobs["without-s0"]["bank_size"] == 0
    assert (run / "rejection" / "crops.npz").is_file()
    code, _, err = cli("study", "--run-dir", run, "--seeds", "2", "--part-networks-lr", "0.01",
                       "--train-per-class", "3", "--out", out)
    assert code == 2 and "'train_per_class' with trained part networks" in err


def test_per_class_subset_is_seeded_nested_and_capped():
    from ghns.study import per_class_subset

    labels = np.repeat(np.arange(4), [3, 10, 10, 1])
    five = per_class_subset(labels, 5)
    assert np.array_equal(np.bincount(labels[five], minlength=4), [3, 5, 5, 1])
    assert np.array_equal(five, np.sort(five)) and np.array_equal(five, per_class_subset(labels, 5))
    two = per_class_subset(labels, 2)
    assert set(two) <= set(five)  # the first n of the draw for more
    assert not np.array_equal(five, per_class_subset(labels, 5, seed=1))
