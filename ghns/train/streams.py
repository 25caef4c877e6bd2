"""The random streams of a training loop, saved with its checkpoints.

A loop draws its batches, flips, shifts, part shuffles and negatives from a torch generator (and,
where it needs one, a numpy generator); dropout and drop-connect draw from torch's global
generator. ``Streams`` holds all three and goes into every checkpoint the loop reports, so a
worker restarted from a checkpoint draws exactly what the uninterrupted worker would have drawn
next. With the weights, optimiser, scheduler and best-epoch state restored too, a run killed and
resumed ends bitwise equal to the same run never interrupted on a CPU (same thread count and
number of workers; on a GPU the device generators are saved too, but CUDA kernels may add their
own nondeterminism).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch


class Streams:
    """A torch and a numpy generator seeded with ``seed``, and torch's global generator."""

    def __init__(self, seed: int) -> None:
        self.torch = torch.Generator()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.torch.manual_seed(seed)
        self.numpy = np.random.default_rng(seed)

    def state(self) -> dict[str, Any]:
        """Tensors and a string only: checkpoints load with ``weights_only=True``."""
        state = {"torch": self.torch.get_state(), "global": torch.get_rng_state(),
                 "numpy": json.dumps(self.numpy.bit_generator.state)}
        if torch.cuda.is_available():  # dropout on a GPU draws from the device's generators
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load(self, state: dict[str, Any]) -> None:
        self.torch.set_state(state["torch"])
        torch.set_rng_state(state["global"])
        self.numpy.bit_generator.state = json.loads(state["numpy"])
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
