"""``ghns generate`` end to end on a tiny synthetic run: determinism across actor counts,
resumption without duplicates, bad flags."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ghns.generate.bank import read_bank
from tests.conftest import TINY_SYNTHETIC

pytestmark = pytest.mark.slow

STAGE1 = ["--object-method", "oracle", "--part-method", "oracle", "--stage1-epochs", "2",
          "--batch-classes", "2", "--batch-images", "2", "--embedding-dim", "16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_session):
    from ghns.cli import main

    run = tmp_path_factory.mktemp("gen") / "run"
    try:
        main(["train-parts", "--run-dir", str(run), *TINY_SYNTHETIC, *STAGE1])
    except SystemExit as exc:
        assert exc.code in (0, None)
    return run


def bank_of(run):
    meta, emb = read_bank(run / "negatives")
    return meta.drop(columns=[]), emb


def test_same_bank_with_one_or_two_actors_and_a_summary(cli, trained):
    args = ["generate", "--run-dir", trained, "--per-class", "6", "--tau", "0.2", "--neighbors", "3"]
    code, out, err = cli(*args, "--actors", "1", "--force")
    assert code == 0, err
    one, emb1 = bank_of(trained)
    assert "hard negatives for 4 classes" in out and "candidates scored" in out
    summary = json.loads((trained / "generate.json").read_text())
    assert summary["kept"] == len(one) and summary["classes"] == 4
    code, out, err = cli(*args, "--actors", "2", "--force")
    assert code == 0, err
    two, emb2 = bank_of(trained)
    assert one.equals(two) and np.array_equal(emb1, emb2)
    # provenance is consistent: swapped parts come from other classes, kept parts from the reference
    for k in range(3):
        swapped = two["swapped"].str[k] == "1"
        assert (two.loc[swapped, f"part{k + 1}_class"] != two.loc[swapped, "class"]).all()
        assert (two.loc[~swapped, f"part{k + 1}_image"] == two.loc[~swapped, "ref_image"]).all()
    assert len(two) and (two["score"] >= 0.2).all() and two.groupby("class").size().max() <= 6


def test_every_class_rule_through_an_approximate_index(cli, trained, tmp_path):
    """--donor-classes 0 goes through the driver's part index, read by the actors; an approximate
    one reports its tuned nprobe and its recall, and the store is gone when the stage ends."""
    trained = shutil.copytree(trained, tmp_path / "run")  # the flags below stay in its config
    base = ["generate", "--run-dir", trained, "--per-class", "6", "--tau", "0.2", "--neighbors", "3",
            "--donor-classes", "0", "--force"]
    assert cli(*base, "--neighbour-index", "flat")[0] == 0
    exact, _ = bank_of(trained)
    lookup = json.loads((trained / "generate.json").read_text())["lookup"]
    assert lookup["kind"] == "flat" and lookup["recall"] == 1.0 and lookup["index_mb"] > 0
    code, out, err = cli(*base, "--neighbour-index", "ivf")
    assert code == 0, err
    lookup = json.loads((trained / "generate.json").read_text())["lookup"]
    assert lookup["kind"] == "ivf" and 0.0 <= lookup["recall"] <= 1.0 and lookup["nprobe"] >= 1
    assert "part lookup: ivf" in out and not (trained / "negatives" / "store").exists()
    approx, _ = bank_of(trained)
    key = ["ref_image", "part1_image", "part2_image", "part3_image"]
    shared = len(approx[key].merge(exact[key]).drop_duplicates())
    assert shared / len(exact) >= 0.5  # retrieval may miss, never invents: most of the exact bank
    assert cli(*base, "--neighbour-index", "hnsw")[0] == 2


def test_interrupted_run_resumes_without_duplicates(cli, trained):
    args = ["generate", "--run-dir", trained, "--per-class", "5", "--tau", "0.2", "--neighbors", "2"]
    assert cli(*args, "--force")[0] == 0
    full, _ = bank_of(trained)
    shards = sorted((trained / "negatives").glob("class_*.parquet"))
    kept_mtime = shards[0].stat().st_mtime_ns
    for p in shards[2:]:
        p.unlink()  # as if the run stopped after two classes
    stages = json.loads((trained / "stages.json").read_text())
    stages.pop("generate")
    (trained / "stages.json").write_text(json.dumps(stages))
    code, out, err = cli(*args)
    assert code == 0, err
    assert "resuming, 2 of 4 classes already done" in err
    assert shards[0].stat().st_mtime_ns == kept_mtime  # not redone
    again, _ = bank_of(trained)
    assert again.equals(full)
    code, out, err = cli("generate", "--run-dir", trained, "--per-class", "5", "--tau", "0.2",
                         "--neighbors", "2")
    assert code == 0 and "generate: done already" in err


@pytest.mark.parametrize("flag,value,message", [
    ("--per-class", "0", "'per_class' must be >= 1, got 0"),
    ("--per-class", "-3", "'per_class' must be >= 1, got -3"),
    ("--tau", "1.0", "'tau' must be < 1.0, got 1.0"),
    ("--tau", "0", "'tau' must be > 0.0, got 0.0"),
    ("--tau", "1.5", "'tau' must be < 1.0, got 1.5"),
])
def test_bad_flags_fail_with_one_line(cli, tmp_path, flag, value, message):
    code, out, err = cli("generate", "--run-dir", tmp_path / "none", flag, value)
    assert code == 2
    assert err.strip().splitlines() == [f"error: {message}"]


def test_summary_has_purity_and_swap_similarity_and_the_mosaic_draws(cli, trained, tmp_path):
    args = ["generate", "--run-dir", trained, "--per-class", "6", "--tau", "0.2", "--neighbors", "3"]
    code, out, err = cli(*args, "--force")
    assert code == 0, err
    summary = json.loads((trained / "generate.json").read_text())
    bank, _ = bank_of(trained)
    purity = summary["purity"]  # synthetic: part ground truth exists (oracle parts here)
    assert purity is not None and 0 <= purity["overall"] <= 1
    assert sum(s["kept"] for s in purity["per_shell"].values()) == len(bank)
    assert set(purity["per_class"]) <= set(summary["per_class_kept"])
    assert summary["filternet_temperature"] > 0 and summary["settings"]["donor_classes"] == 5
    sim = summary["swap_similarity"]
    assert sum(sim[f"part{k}"]["swaps"] for k in (1, 2, 3)) == int(bank["n_swapped"].sum())
    assert "purity (every swapped part of another variant" in out
    png = tmp_path / "neg.png"
    code, out, err = cli("show", "negatives", "--run-dir", trained, "--rows", "3", "--out", png)
    assert code == 0, err
    from PIL import Image

    assert Image.open(png).size[1] > 3 * 96
