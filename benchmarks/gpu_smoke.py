"""GPU smoke benchmark, for a machine with a GPU: the real stage code on the synthetic dataset.

1. Stage 1 (part networks, cls + triplet + adversarial) through Ray Train on one GPU worker with
   AMP (bf16 autocast, on by default on CUDA) for ``--steps`` optimizer steps: images/s.
2. Stage 2 with two GPU-placed FilterNet actors (Ray Data; with one GPU they get half each):
   candidates/s.

Localization uses the synthetic dataset's exact boxes (oracle), so nothing but stage 1 trains.

    python benchmarks/gpu_smoke.py                   # needs CUDA; --device cpu for a dry run
    python benchmarks/gpu_smoke.py --device cpu --steps 20 --backbone tiny_cnn

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224, help="localizer image side; part crops are half")
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; run on a GPU machine or pass --device cpu")

    from ghns.config import Config
    from ghns.pipeline import run_until

    batch = 8 * 4  # P x K of stage 1
    per_class = 120
    train_images = int(20 * per_class * 0.75 * 0.9)
    epochs = max(1, math.ceil(args.steps / max(1, train_images // batch)))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(run_dir=f"{tmp}/run", root=f"{tmp}/synthetic", synthetic_image_size=args.image_size,
                     object_method="oracle", part_method="oracle", backbone=args.backbone,
                     pretrained="none", stage1_epochs=epochs, device=args.device, workers=1,
                     actors=args.actors, per_class=150, tau=0.5, max_part_similarity=1.0)
        run_until(cfg, "localize")
        start = time.perf_counter()
        stage1 = run_until(cfg, "train-parts")
        stage1_wall = time.perf_counter() - start
        history = json.loads((Path(cfg.run_dir) / "train-parts" / "history.json").read_text())
        seconds = sorted(h["epoch_seconds"] for h in history)
        steps_per_epoch = train_images // batch
        gen = run_until(cfg, "generate")
        gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
        print(json.dumps({
            "device": gpu, "backbone": args.backbone, "part_crop": cfg.resolved_part_size(),
            "stage1_steps": steps_per_epoch * len(history), "amp": args.device == "cuda",
            "stage1_images_per_s": round(steps_per_epoch * batch / seconds[len(seconds) // 2], 1),
            "stage1_wall_s": round(stage1_wall, 1),
            "filternet_val_accuracy": stage1["filternet"]["val_accuracy"],
            "generate_actors": args.actors, "candidates": gen["candidates"],
            "candidates_per_s": round(gen["candidates"] / gen["seconds"], 1),
            "kept": gen["kept"]}))


if __name__ == "__main__":
    main()
