"""Stage 1 over a pretrained backbone runs its frozen blocks once per part crop for the run
(``ghns.train_parts.part_trunks``): training reads the stored outputs, and the embedding pass runs only
the later blocks on them, with the embeddings of the whole networks on the images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import TINY_SYNTHETIC, pretrained_tiny_weights

pytestmark = pytest.mark.slow


def test_pretrained_part_networks_train_and_embed_from_stored_trunks(tmp_path, cli, ray_session):
    from ghns.checkpoint import load_model
    from ghns.data.catalog import Catalog
    from ghns.data.tensors import load_part_crops, to_float
    from ghns.errors import StageError
    from ghns.rundir import RunDir
    from ghns.train_parts.embed import EmbedActor
    from ghns.train_parts.part_trunks import (BOX_COLUMNS, part_box_rows, part_trunk_folder,
                                         read_part_trunks, stores_part_trunks)
    from ghns.train_parts.table import read_embeddings
    from ghns.train_parts.train import build_parts

    weights = pretrained_tiny_weights(tmp_path / "tiny.pt")
    run = RunDir(tmp_path / "run")
    code, out, err = cli("train-parts", "--run-dir", run.path, *TINY_SYNTHETIC, "--pretrained", weights,
                         "--trainer", "local")
    assert code == 0, err[-3000:]
    (folder,) = run.trunks.glob("parts-*")
    assert {p.name for p in folder.glob("*.pt")} == {"train.pt", "val.pt", "test.pt"}

    catalog = Catalog.read(run.catalog)
    model, settings = load_model(run.part_networks, "part_networks")
    assert settings["frozen_blocks"] >= 1  # pretrained: the first blocks are frozen
    rows = part_box_rows(run, catalog)
    assert part_trunk_folder(run, model, settings["image_size"], rows) == folder

    # the stored outputs are the frozen blocks of the part crops (float32)
    test = rows[rows["split"] == "test"].reset_index(drop=True)
    stored = read_part_trunks(folder, "test", test["image_id"].to_numpy(), model)
    crops, failed = load_part_crops(test["path"].tolist(),
                                    test[BOX_COLUMNS].to_numpy(dtype=float).reshape(len(test), 3, 4),
                                    settings["image_size"])
    assert not failed
    with torch.no_grad():
        direct = torch.stack([net.trunk(to_float(crops[:, k])) for k, net in enumerate(model.networks())], 1)
    assert stored.dtype == torch.float32
    torch.testing.assert_close(stored, direct, atol=1e-4, rtol=1e-4)

    # the embeddings from them equal the whole networks' on the images (the Ray Data pass's actor)
    meta, emb = read_embeddings(run.embeddings)
    assert meta["image_id"].tolist() == catalog.table["image_id"].tolist()
    actor = EmbedActor(str(run.part_networks))
    from_images = actor(rows.assign(_order=np.arange(len(rows))))
    expected = np.stack([np.stack(from_images[f"part{k}"].to_numpy()) for k in (1, 2, 3)], axis=1)
    np.testing.assert_allclose(emb, expected, atol=1e-5)

    # moved boxes or other frozen weights never read these outputs
    moved = rows.copy()
    moved.loc[0, "part1_x"] += 1.0
    assert part_trunk_folder(run, model, settings["image_size"], moved) != folder
    other = build_parts(settings, pretrained="none")
    with pytest.raises(StageError, match="another model"):
        read_part_trunks(folder, "test", test["image_id"].to_numpy(), other)
    with pytest.raises(StageError, match="does not hold"):
        read_part_trunks(folder, "test", test["image_id"].to_numpy()[::-1], model)

    assert stores_part_trunks(model, "tiny_cnn", str(weights))
    assert not stores_part_trunks(model, "tiny_cnn", "auto")  # tiny_cnn's default: random weights

    # from scratch (no pretrained weights): no store, the part networks cache in their worker
    scratch = RunDir(tmp_path / "scratch")
    code, out, err = cli("train-parts", "--run-dir", scratch.path, *TINY_SYNTHETIC, "--trainer", "local")
    assert code == 0, err[-3000:]
    assert not list(scratch.trunks.glob("parts-*")) and scratch.embeddings.is_file()
