"""How hard is the embedded synthetic dataset? A small CNN trained from scratch on whole images.

Trains ``tiny_cnn`` + global average pooling + a linear classifier on the synthetic train split
(plain torch, CPU), picks the epoch with the best validation accuracy and reports test top-1
there. Last line: one JSON object.

    python benchmarks/synthetic_baseline.py [--epochs 40] [--classes 20] [--per-class 120]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from ghns.config import Config
from ghns.data import build_catalog
from ghns.data.tensors import augment, load_resized, to_float
from ghns.models.backbones import create_backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    defaults = Config()
    ap.add_argument("--classes", type=int, default=defaults.synthetic_classes)
    ap.add_argument("--per-class", type=int, default=defaults.synthetic_per_class)
    ap.add_argument("--image-size", type=int, default=defaults.synthetic_image_size)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=None, help="where the synthetic images are rendered")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    cfg = Config(dataset="synthetic", root=args.root, synthetic_classes=args.classes,
                 synthetic_per_class=args.per_class, synthetic_image_size=args.image_size,
                 seed=args.seed)
    catalog = build_catalog(cfg, progress=False)
    data = {}
    for split in ("train", "val", "test"):
        rows = catalog.split(split)
        images = load_resized(rows["path"].tolist(), args.image_size).images
        data[split] = (images, torch.tensor(rows["label"].to_numpy()))

    backbone = create_backbone("tiny_cnn", "none")
    model = nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(backbone.out_channels, len(catalog.classes)))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.epochs *
                                                ((len(data["train"][1]) + 63) // 64))
    gen = torch.Generator().manual_seed(args.seed)

    def accuracy(split: str) -> float:
        model.eval()
        images, labels = data[split]
        with torch.no_grad():
            pred = torch.cat([model(to_float(images[i:i + 256])).argmax(1)
                              for i in range(0, len(images), 256)])
        return 100.0 * (pred == labels).float().mean().item()

    start, best = time.perf_counter(), (-1.0, 0, 0.0)
    images, labels = data["train"]
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            loss = nn.functional.cross_entropy(model(augment(to_float(images[idx]), gen)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val = accuracy("val")
        if val >= best[0]:
            best = (val, epoch + 1, accuracy("test"))
    print(json.dumps({"bench": "synthetic_baseline", "model": "tiny_cnn from scratch",
                      "classes": len(catalog.classes), "train_images": len(data["train"][1]),
                      "val_images": len(data["val"][1]), "test_images": len(data["test"][1]),
                      "epochs": args.epochs, "best_epoch": best[1], "val_top1": round(best[0], 2),
                      "test_top1": round(best[2], 2), "chance_top1": round(100 / len(catalog.classes), 2),
                      "wall_s": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
