"""A pretrained localizer whose frozen blocks start with the image classifiers' reads their
frozen-trunk outputs (``ghns.trunks``) instead of passing the images through those blocks again:
the boxes equal the ones from the images, and stage 3 reads the same outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import TINY_SYNTHETIC, pretrained_tiny_weights

pytestmark = pytest.mark.slow


def test_pretrained_localizer_reads_the_classifiers_trunk_outputs(tmp_path, cli, ray_session):
    from ghns.checkpoint import load_checkpoint
    from ghns.config import Config
    from ghns.data.catalog import Catalog
    from ghns.localize.infer import LocalizeActor
    from ghns.rundir import RunDir
    from ghns.train_final.stage import with_trunks
    from ghns.train.specs import ImageClassifierSpec

    weights = pretrained_tiny_weights(tmp_path / "tiny.pt")
    run = RunDir(tmp_path / "run")
    code, out, err = cli("localize", "--run-dir", run.path, *TINY_SYNTHETIC, "--pretrained", weights,
                         "--trainer", "local")
    assert code == 0, err[-3000:]
    (folder,) = run.trunks.iterdir()  # made by localize, for every split
    assert folder.name.startswith("whole-") and {p.name for p in folder.glob("*.pt")} == {
        "train.pt", "val.pt", "test.pt"}

    catalog = Catalog.read(run.catalog)
    settings = load_checkpoint(run.path / "localize" / "model.pt")["settings"]
    assert settings["frozen_blocks"] == 3  # pretrained: the localizer trains its heads only
    actor = LocalizeActor(str(run.path / "localize" / "model.pt"), 0.5, 0.5)
    from_images = actor(catalog.table[["image_id", "path", "label", "split"]].copy())
    found = pd.read_parquet(run.localization).set_index("image_id").loc[from_images["image_id"]]
    np.testing.assert_array_equal(found["pred_label"].to_numpy(), from_images["pred_label"].to_numpy())
    for k in (1, 2, 3):  # part centres, in original pixels (float16 outputs: a fraction of a pixel)
        for c in ("cx", "cy"):
            np.testing.assert_allclose(found[f"part{k}_{c}"].to_numpy(), from_images[f"part{k}_{c}"].to_numpy(),
                                       atol=0.5)

    cfg = Config.from_yaml(run.config)  # the settings the run was made with
    spec = ImageClassifierSpec.from_config(cfg, run, len(catalog.classes), crop="whole", seed=0,
                                           output=run.train_final / "original.pt")
    assert with_trunks(cfg, run, catalog, spec).trunks == str(folder.resolve())  # stage 3 reads them
