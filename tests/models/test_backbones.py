"""The backbone factory: registry, output shapes, weights from a file, offline errors."""

from __future__ import annotations

import pytest
import torch

from ghns.errors import ConfigError
from ghns.models.backbones import BACKBONES, create_backbone


def test_registry_names_and_unknown_backbone():
    assert {"tiny_cnn", "resnet18", "resnet50", "vgg16", "efficientnet_lite0"} <= set(BACKBONES)
    with pytest.raises(ConfigError, match="unknown backbone 'nope'; choose one of"):
        create_backbone("nope", "none")


@pytest.mark.parametrize("name,stride", [("tiny_cnn", 8), ("resnet18", 32), ("vgg16", 16),
                                         ("efficientnet_lite0", 32)])
def test_feature_map_channels_and_stride(name, stride):
    net = create_backbone(name, "none").eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, net.out_channels, 64 // stride, 64 // stride)
    assert len(net.split(1)[1]) == 1 and len(net.split(0)[1]) == 0


def test_tiny_cnn_does_not_see_the_image_edge():
    """Replicate padding: a flat image gives the same features at every location, so no
    location (a part of the localizer, say) can recognise the image border."""
    net = create_backbone("tiny_cnn", "none").eval()
    with torch.no_grad():
        feats = net(torch.full((1, 3, 96, 96), 0.3))
    assert feats.shape[-2:] == (12, 12)
    assert torch.allclose(feats, feats[..., :1, :1].expand_as(feats), atol=1e-5)


def test_weights_from_a_file_and_clear_errors(tmp_path):
    src = create_backbone("tiny_cnn", "none")
    path = tmp_path / "tiny.pt"
    torch.save(src.state_dict(), path)
    loaded = create_backbone("tiny_cnn", str(path))
    for a, b in zip(src.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="not found"):
        create_backbone("tiny_cnn", str(tmp_path / "missing.pt"))
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ConfigError, match="does not fit this backbone"):
        create_backbone("tiny_cnn", str(tmp_path / "wrong.pt"))
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        create_backbone("tiny_cnn", "imagenet")


def test_torchvision_imagenet_weights_missing_offline_names_both_options(monkeypatch, tmp_path):
    import torchvision.models as tvm

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(tvm.WeightsEnum, "get_state_dict", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as err:
        create_backbone("resnet18", "imagenet")
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints") in message and "--pretrained" in message


def test_efficientnet_lite0_imagenet_weights_come_from_the_wheel():
    a, b = create_backbone("efficientnet_lite0", "imagenet"), create_backbone("efficientnet_lite0", "imagenet")
    random = create_backbone("efficientnet_lite0", "none")
    first = next(iter(a.state_dict()))
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], random.state_dict()[first])
