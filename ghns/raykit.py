"""Thin adapters between ghns and Ray: start-up, device placement, batch inference.

Everything Ray-specific that stages share lives here, so the math stays in pure functions and
each stage's Ray code is a few lines. On a laptop ``ensure_ray`` starts a small local instance
(all CPUs, a small object store; its dashboard only with ``--dashboard``); inside ``ray job submit`` or with ``--ray-address``
it joins the cluster.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ghns.config import Config

log = logging.getLogger(__name__)

# Quiet by default; a user's environment wins. Ray's token authentication (on by default for the
# local clusters Ray 2.60 starts) is left as Ray sets it: a Ray that ghns starts is locked.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def ensure_ray(cfg=None) -> None:
    """Connect to (or start) Ray once per process; later calls are no-ops."""
    import ray

    if ray.is_initialized():
        return
    address = getattr(cfg, "ray_address", None) or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    store_mb = getattr(cfg, "object_store_mb", 512)
    ray.init(num_cpus=os.cpu_count(), object_store_memory=store_mb * 2**20,
             include_dashboard=bool(getattr(cfg, "dashboard", False)), log_to_driver=True,
             configure_logging=False)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_nodes() -> int:
    """Alive nodes of the Ray this process is connected to (0 when Ray is not started)."""
    import ray

    if not ray.is_initialized():
        return 0
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def resolve_device(cfg: Config) -> str:
    """'cuda' or 'cpu' for the workers: 'auto' means cuda when the cluster has GPUs."""
    if cfg.device != "auto":
        return cfg.device
    try:
        return "cuda" if cluster_gpus() > 0 else "cpu"
    except Exception:  # noqa: BLE001 - Ray not started: look at this process
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def actor_resources(cfg: Config, actors: int) -> dict[str, float]:
    """Resources per inference actor. On GPU: one GPU each, or an equal share when there are
    more actors than GPUs (two actors on one GPU get half each, instead of one waiting forever).
    On CPU: a fraction of the CPUs that leaves room for Ray Data's own tasks (two 1-CPU actors
    on 2 CPUs starve them)."""
    import ray

    if resolve_device(cfg) == "cuda":
        gpus = cluster_gpus()
        share = min(1.0, gpus / max(1, actors)) if gpus > 0 else 1.0
        return {"num_gpus": share, "num_cpus": 1.0}
    cpus = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return {"num_cpus": max(0.25, min(1.0, (cpus - 0.5) / max(1, actors)))}


def map_batches_pandas(rows: pd.DataFrame, actor_cls: type, actor_kwargs: dict[str, Any], cfg: Config,
                       actors: int = 1, batch_size: int = 64) -> pd.DataFrame:
    """Stream ``rows`` through a pool of ``actors`` stateful ``actor_cls`` instances
    (``Ray Data map_batches`` with ``ActorPoolStrategy``) and collect the output as pandas.

    Each actor is built once with ``actor_kwargs`` (it loads its model there) and is called on
    pandas batches of ``batch_size`` rows; row order of the result follows ``rows``.
    """
    import ray
    from ray.data import ActorPoolStrategy

    ensure_ray(cfg)
    # Ray Data logs its progress every few seconds at INFO; the stages log their own.
    logging.getLogger("ray.data").setLevel(os.environ.get("GHNS_DATA_LOG_LEVEL", "WARNING"))
    if rows.empty:
        return pd.DataFrame()
    rows = rows.reset_index(drop=True).assign(_order=np.arange(len(rows)))
    n_blocks = max(1, min(len(rows), max(2 * actors, len(rows) // batch_size)))
    bounds = np.linspace(0, len(rows), n_blocks + 1).astype(int)
    blocks = [rows.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    resources: dict[str, Any] = actor_resources(cfg, actors)
    scored = ray.data.from_pandas(blocks).map_batches(
        actor_cls, fn_constructor_kwargs=actor_kwargs, batch_size=batch_size, batch_format="pandas",
        compute=ActorPoolStrategy(size=actors), **resources)
    out = scored.to_pandas()
    return out.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def torch_threads_for(actors: int) -> int:
    """Intra-op threads for one of ``actors`` CPU workers sharing this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, actors))
