"""The bar for stage 3: logistic regression on frozen global features of a pretrained backbone.

Every image (whole, resized to the backbone's input size, plus its horizontal flip, averaged) goes
once through the frozen backbone; global average pooling gives one feature vector per image. A
multinomial logistic regression (L-BFGS, full batch, standardised features) is fitted on train
for each L2 strength of a grid; the strength is chosen on val and test is reported there. Plain
torch, CPU, no Ray. Last line: one JSON object.

The features do not depend on the seed (only the val split carved from train does), so they are
kept in ``$GHNS_CACHE/probe-features/`` (default ``~/.cache/ghns``) per image path, size and
modification time, and a second seed costs seconds. ``--predictions FILE.npz`` writes the test
split's image ids and predicted labels, for comparisons paired on the same test images.

    python benchmarks/linear_probe.py --dataset cub --root ../shared/data/cub50-dev/CUB_200_2011
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
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


def cached_features(backbone, key: str, paths: list[str], size: int) -> torch.Tensor:
    """``features`` of each image at ``paths``, computed once per (backbone, size, image file)."""
    folder = Path(os.environ.get("GHNS_CACHE", Path.home() / ".cache" / "ghns")) / "probe-features"
    stamps = [f"{p}|{os.stat(p).st_mtime_ns}|{os.stat(p).st_size}" for p in paths]
    cache = folder / (hashlib.sha1(f"{key}|{size}|{'/'.join(stamps)}".encode()).hexdigest()[:20] + ".npy")
    if cache.is_file():
        return torch.from_numpy(np.load(cache))
    feats = features(backbone, load_resized(paths, size).images)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, feats.numpy())
    tmp.replace(cache)
    return feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cub")
    ap.add_argument("--root", required=True)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--pretrained", default="imagenet")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--predictions", help="write the test split's image ids and predicted labels here (.npz)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    catalog = build_catalog(Config(dataset=args.dataset, root=args.root, seed=args.seed), progress=False)
    backbone = create_backbone(args.backbone, args.pretrained).eval()
    # randomly initialised weights (--pretrained none) depend on the seed; pretrained ones do not
    key = f"{args.backbone}|{args.pretrained}" + (f"|{args.seed}" if args.pretrained == "none" else "")
    ordered = catalog.table.sort_values("image_id")  # every split's rows, in one seed-free order
    feats = cached_features(backbone, key, ordered["path"].tolist(), args.image_size)
    row_of = {int(i): k for k, i in enumerate(ordered["image_id"])}
    data = {}
    for split in ("train", "val", "test"):
        rows = catalog.split(split)
        data[split] = (feats[[row_of[int(i)] for i in rows["image_id"]]], torch.tensor(rows["label"].to_numpy()))
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
    if args.predictions:
        with torch.no_grad():
            predicted = best_probe.logits(data["test"][0]).argmax(1).numpy()
        np.savez(args.predictions, image_id=catalog.split("test")["image_id"].to_numpy(),
                 label=data["test"][1].numpy(), predicted=predicted)
    print(json.dumps({"bench": "linear_probe", "dataset": args.dataset, "backbone": args.backbone,
                      "image_size": args.image_size, "classes": len(catalog.classes),
                      "train_images": len(data["train"][1]), "val_images": len(data["val"][1]),
                      "test_images": len(data["test"][1]), "l2": best["l2"],
                      "val_top1": best["val_top1"], "test_top1": best["test_top1"], "grid": grid,
                      "feature_s": round(feature_s, 1),
                      "wall_s": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
