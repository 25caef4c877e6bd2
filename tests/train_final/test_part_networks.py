"""Stage 3 training the part networks (``ghns.train_final.part_networks``) on the tiny run: the
start is the frozen classifier, online n+ equal the stored ones until the networks move and then
follow them, and bad provenance is one clear error."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ghns.config import Config
from ghns.data.catalog import Catalog
from ghns.rundir import RunDir
from ghns.train_final import part_networks as pn
from ghns.train_final.parts import NegativeBank, PartsData, PartsSettings, parts_probe


@pytest.fixture(scope="module")
def parts_run(tiny_run):
    run = RunDir(tiny_run)
    catalog = Catalog.read(run.catalog)
    networks, settings = pn.stage1_networks(run)
    data = PartsData.read(run.embeddings)
    inputs = pn.read_part_inputs(run, catalog, networks, settings)
    bank = NegativeBank.read(run.path / "negatives", data.train_x.shape[1])
    parts = replace(PartsSettings.from_config(Config.from_yaml(run.config, saved_run=True)),
                    parts_epochs=1, patience=0, parts_keep="not_worse", replace_start_p=1.0)
    return {"run": run, "catalog": catalog, "networks": networks, "data": data, "inputs": inputs,
            "bank": bank, "settings": parts, "probe": parts_probe(data, len(catalog.classes))}


def _start(r) -> pn.PartsWithNetworks:
    return pn.start_model(r["networks"], r["data"], r["settings"], len(r["catalog"].classes),
                          r["inputs"].cached, r["probe"]).eval()


def test_the_start_is_the_frozen_classifier_and_online_sets_are_the_stored_ones(parts_run):
    r = parts_run
    model = _start(r)
    assert len(r["bank"]) > 0
    with torch.no_grad():
        torch.testing.assert_close(model.embed(r["inputs"].train_x), r["data"].train_x, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(r["inputs"].val_x)[1], r["probe"].logits(r["data"].val_x),
                                   atol=1e-4, rtol=1e-4)
        rows = pn.bank_rows(r["bank"], r["inputs"])
        torch.testing.assert_close(pn.recompose(model, r["inputs"].train_x, rows), r["bank"].x, atol=1e-5, rtol=0)


def test_online_negatives_follow_the_networks_as_they_train(parts_run):
    r = parts_run
    model = _start(r)
    before = [p.detach().clone() for p in model.networks.parameters()]
    model, best = pn.fit_with_networks(r["inputs"], model, r["bank"], r["settings"], 0, "online", 0.05)
    assert best.epoch == 0  # not_worse with p = 1: the trained epoch replaces the start
    assert any(not torch.equal(a, b) for a, b in zip(before, model.networks.parameters()))
    rows = pn.bank_rows(r["bank"], r["inputs"])[:6]
    with torch.no_grad():
        online = pn.recompose(model.eval(), r["inputs"].train_x, rows)
        one_by_one = torch.stack([torch.cat([model.part_embedding(k, r["inputs"].train_x[row[k], k][None])[0]
                                             for k in range(3)]) for row in rows])
    torch.testing.assert_close(online, one_by_one, atol=1e-5, rtol=0)
    assert (online - r["bank"].x[:6]).abs().max() > 1e-3  # no longer the stage-1 features


@pytest.mark.parametrize("source", ["none", "stored", "mined"])
def test_every_source_trains_and_only_stored_and_online_read_the_bank(parts_run, source):
    r = parts_run
    model, best = pn.fit_with_networks(r["inputs"], _start(r), r["bank"], r["settings"], 0, source, 0.01)
    logits = pn.predict(model, r["inputs"].val_x)
    assert logits.shape == (len(r["inputs"].val_y), len(r["catalog"].classes)) and torch.isfinite(logits).all()
    assert best.epoch in (-1, 0)


def test_bad_source_and_foreign_provenance_are_clear_errors(parts_run):
    r = parts_run
    with pytest.raises(ValueError, match="unknown negative source"):
        pn.fit_with_networks(r["inputs"], _start(r), r["bank"], r["settings"], 0, "generated", 0.01)
    foreign = NegativeBank(r["bank"].x[:1], sources=np.array([[-5, -5, -5]]))
    with pytest.raises(ValueError, match="not train images of this run"):
        pn.bank_rows(foreign, r["inputs"])


def test_trunk_outputs_and_crops_give_the_same_embeddings():
    """With a frozen trunk the networks read its outputs (``crop_inputs``); the embeddings and
    logits are those of the whole networks on the crops."""
    from ghns.models.classifiers import PartsClassifier
    from ghns.models.parts import PartNetworks

    torch.manual_seed(0)
    networks = PartNetworks("tiny_cnn", "none", 8, 4, frozen_blocks=2).eval()
    head = PartsClassifier(3, 8, 4, hidden=16)
    crops = torch.randint(0, 256, (5, 3, 3, 32, 32), dtype=torch.uint8)
    trunks = pn.crop_inputs(networks, crops, cached=True)
    assert trunks.dtype == torch.float32 and trunks.shape[:2] == (5, 3)
    assert torch.equal(pn.crop_inputs(networks, crops, cached=False), crops)
    on_trunks = pn.PartsWithNetworks(networks, head, cached=True).eval()
    on_crops = pn.PartsWithNetworks(networks, head, cached=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(on_trunks.embed(trunks), on_crops.embed(crops), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pn.predict(on_trunks, trunks), pn.predict(on_crops, crops), atol=1e-5, rtol=1e-5)
