from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ghns.models.parts import FilterNet, PartNetworks
from ghns.sampling import pk_batches
from ghns.train_parts.filternet import train_filternet
from ghns.train_parts.table import read_embeddings, write_embeddings


def test_pk_batches_shape_and_coverage():
    labels = torch.tensor([c for c in range(10) for _ in range(6)])
    g = torch.Generator().manual_seed(0)
    batches = pk_batches(labels, 4, 3, g)
    assert len(batches) == 5  # 60 images / (4 x 3)
    for b in batches:
        classes, counts = torch.unique(labels[b], return_counts=True)
        assert len(classes) == 4 and (counts == 3).all()
        assert len(set(b.tolist())) == 12  # without replacement inside a class
    again = pk_batches(labels, 4, 3, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


def test_pk_batches_small_classes_are_drawn_with_replacement():
    labels = torch.tensor([0, 1, 1, 1])
    batches = pk_batches(labels, 2, 3, torch.Generator().manual_seed(1))
    assert (labels[batches[0]] == 0).sum() == 3


def test_linear_filternet_logits_decompose_per_part():
    torch.manual_seed(0)
    net = FilterNet(3, 8, 5)
    sets = torch.randn(7, 3, 8)
    tables, bias = net.part_tables([sets[:, k] for k in range(3)])
    assert torch.allclose(tables[0] + tables[1] + tables[2] + bias, net(sets), atol=1e-5)
    with pytest.raises(ValueError):
        FilterNet(3, 8, 5, hidden=4).part_tables([sets[:, k] for k in range(3)])


def test_filternet_learns_separable_sets():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 3, 6)).astype(np.float32)
    y = rng.integers(0, 4, 200)
    x = centres[y] + 0.1 * rng.normal(size=(200, 3, 6)).astype(np.float32)
    net, figures = train_filternet(x[:150], y[:150], x[150:], y[150:], 4, epochs=100, lr=0.05)
    assert figures["val_accuracy"] == 100.0


def test_embedding_table_roundtrip(tmp_path):
    meta = pd.DataFrame({"image_id": [3, 1], "split": ["train", "test"], "label": [0, 2]})
    emb = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    write_embeddings(tmp_path / "e.parquet", meta, emb)
    back_meta, back = read_embeddings(tmp_path / "e.parquet")
    assert back_meta.equals(meta) and np.array_equal(back, emb)


def test_part_networks_shapes_and_discriminator_sets():
    model = PartNetworks("tiny_cnn", "none", embedding_dim=16, num_classes=5)
    crops = torch.rand(4, 3, 3, 32, 32)
    sets = torch.tensor([[0, 0, 0], [1, 2, 3]])
    emb, logits, disc = model(crops, sets=sets)
    assert emb.shape == (4, 3, 16) and logits.shape == (4, 3, 5) and disc.shape == (2,)
    assert torch.allclose(emb.norm(dim=2), torch.ones(4, 3), atol=1e-5)
