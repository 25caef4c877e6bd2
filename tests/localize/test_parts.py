"""Part consistency: part k is the same prototype in every image, wherever it sits."""

from __future__ import annotations

import numpy as np
import torch

from ghns.localize.boxes import mass_centre
from ghns.localize.infer import localize_batch
from ghns.models.backbones import create_backbone
from ghns.models.localizer import PartLocalizer


def handmade_localizer(num_classes: int = 3) -> PartLocalizer:
    model = PartLocalizer(create_backbone("tiny_cnn", "none"), num_classes, n_parts=3)
    with torch.no_grad():
        model.prototypes.zero_()
        for k in range(4):  # part k and the background (k = 3) are orthogonal unit vectors
            model.prototypes[k, k] = 1.0
        model.log_scale.fill_(3.0)
    return model


def feature_maps(positions: list[list[tuple[int, int]]], channels: int = 128, side: int = 8):
    """Background (channel 3) everywhere, part k's channel at positions[i][k] of image i."""
    feats = torch.zeros(len(positions), channels, side, side)
    feats[:, 3] = 1.0
    for i, where in enumerate(positions):
        for k, (y, x) in enumerate(where):
            feats[i, :, y, x] = 0.0
            feats[i, k, y, x] = 1.0
    return feats


def test_each_part_follows_its_prototype_in_every_image():
    model = handmade_localizer()
    positions = [[(1, 1), (4, 4), (6, 2)], [(6, 6), (0, 3), (3, 7)], [(2, 5), (5, 0), (0, 0)]]
    out = model.from_features(feature_maps(positions))
    assign = out["assign"].detach().numpy()
    for i, where in enumerate(positions):
        for k, (y, x) in enumerate(where):
            assert np.unravel_index(assign[i, k].argmax(), assign[i, k].shape) == (y, x)
            cx, cy = mass_centre(assign[i, k] ** 8)
            assert abs(cx - (x + 0.5)) < 0.3 and abs(cy - (y + 0.5)) < 0.3
        assert assign[i, 3].mean() > 0.8  # background everywhere else


class FixedModel(torch.nn.Module):
    """A stand-in network with chosen outputs, to test the box logic of ``localize_batch``."""

    def __init__(self, feats, assign, logits, cams):
        super().__init__()
        self.out = {"features": feats, "assign": assign, "cam_logits": logits}
        self.cams = cams  # (N, classes, h, w)

    def forward(self, images):
        return self.out

    def cam(self, feats, classes):
        return self.cams[torch.arange(len(classes)), classes]


def test_localize_batch_boxes_cam_choice_and_degenerate_maps():
    n, h = 3, 8
    cams = torch.zeros(n, 2, h, h)
    cams[:, 0, 0:2, 0:2] = 1.0          # class 0 lights the top-left corner
    cams[:, 1, 4:8, 4:8] = 1.0          # class 1 the bottom-right quarter
    cams[2] = 0.0                       # image 2: an empty CAM
    logits = torch.tensor([[0.0, 5.0]] * n)  # predicted class 1 everywhere
    assign = torch.zeros(n, 4, h, h)
    assign[:, 3] = 1.0
    for k, (y, x) in enumerate([(1, 1), (3, 6), (6, 2)]):
        assign[:, 3, y, x] = 0.0
        assign[:, k, y, x] = 1.0
    model = FixedModel(torch.zeros(n, 1, h, h), assign, logits, cams)
    res = localize_batch(model, torch.zeros(n, 3, 16, 16, dtype=torch.uint8),
                         labels=np.array([0, 0, 0]), is_train=np.array([True, False, False]),
                         sizes=[(32, 32), (64, 32), (16, 16)], cam_threshold=0.5,
                         foreground_threshold=0.5)
    # image 0 is train: CAM of its true class 0 (top-left); image 1 is test: predicted class 1
    assert (res["cam_x"][0], res["cam_y"][0]) == (0.0, 0.0) and res["cam_w"][0] < 16
    assert res["cam_x"][1] > 20 and res["cam_y"][1] > 10
    assert res["cam_degenerate"].tolist() == [False, False, True]
    assert (res["cam_w"][2], res["cam_h"][2]) == (16.0, 16.0)   # whole image of 16 x 16
    # part centres scale to the original size: image 1 is 64 wide, 32 high (x2 in x, x1 in y
    # relative to the 32 px the model saw... here the model saw 16 px: x4 and x2)
    assert abs(res["part2_cx"][1] - 6.5 * 2 * 4) < 6 and abs(res["part2_cy"][1] - 3.5 * 2 * 2) < 4
    assert res["fg_degenerate"].tolist() == [False] * 3
