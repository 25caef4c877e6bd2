"""The bar for stage 3: logistic regression on frozen global features of a pretrained backbone.

Every image (whole, resized to the backbone's input size, plus its horizontal flip, averaged) goes
once through the frozen backbone; global average pooling gives one feature vector per image. A
multinomial logistic regression (L-BFGS, full batch, standardised features) is fitted on train
for each L2 strength of a grid; the strength is chosen on val and test is reported there. Plain
torch, CPU, no Ray. Last line: one JSON object.

    python benchmarks/linear_probe.py --dataset cub --root ../shared/data/cub50-dev/CUB_200_2011
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ghns.config import Config
from ghns.data import build_catalog
from ghns.data.tensors import load_resized, to_float
from ghns.models.backbones import create_backbone
from ghns.probe import L2_GRID, fit_probe



@torch.no_grad()
def features(backbone, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = to_float(images[i:i + batch])
        f = backbone(x).mean(dim=(2, 3)) + backbone(x.flip(-1)).mean(dim=(2, 3))
        out.append(f / 2)
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cub")
    ap.add_argument("--root", required=True)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--pretrained", default="imagenet")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    catalog = build_catalog(Config(dataset=args.dataset, root=args.root, seed=args.seed), progress=False)
    backbone = create_backbone(args.backbone, args.pretrained).eval()
    data = {}
    for split in ("train", "val", "test"):
        rows = catalog.split(split)
        images = load_resized(rows["path"].tolist(), args.image_size).images
        data[split] = (features(backbone, images), torch.tensor(rows["label"].to_numpy()))
    feature_s = time.perf_counter() - start
    classes = len(catalog.classes)

    def top1(probe, split: str) -> float:
        x, y = data[split]
        with torch.no_grad():
            return round(100.0 * (probe.logits(x).argmax(1) == y).float().mean().item(), 2)

    grid = []
    for l2 in L2_GRID:
        one = fit_probe(*data["train"], *data["val"], classes, (l2,))
        grid.append({"l2": l2, "val_top1": top1(one, "val"), "test_top1": top1(one, "test")})
    best_probe = fit_probe(*data["train"], *data["val"], classes)  # the rule stage 3 starts from
    best = {"l2": best_probe.l2, "val_top1": top1(best_probe, "val"), "test_top1": top1(best_probe, "test")}
    print(json.dumps({"bench": "linear_probe", "dataset": args.dataset, "backbone": args.backbone,
                      "image_size": args.image_size, "classes": len(catalog.classes),
                      "train_images": len(data["train"][1]), "val_images": len(data["val"][1]),
                      "test_images": len(data["test"][1]), "l2": best["l2"],
                      "val_top1": best["val_top1"], "test_top1": best["test_top1"], "grid": grid,
                      "feature_s": round(feature_s, 1),
                      "wall_s": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
