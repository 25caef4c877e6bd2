"""GPU placement on this CPU machine, with logical GPUs (``ray.init(num_gpus=2)``): Ray Train
workers and Ray Data actors each get their own GPU; the loops fall back to CPU tensors since
torch sees no CUDA here."""

from __future__ import annotations

import pytest

from tests.conftest import start_test_ray


@pytest.fixture(scope="module")
def logical_gpus():
    import ray

    had = ray.is_initialized()
    ray.shutdown()
    start_test_ray(num_gpus=2)
    yield ray
    ray.shutdown()
    if had:
        start_test_ray()


def test_auto_device_is_cuda_when_the_cluster_has_gpus(logical_gpus):
    from ghns.config import Config
    from ghns.raykit import actor_resources, resolve_device

    cfg = Config(device="auto")
    assert resolve_device(cfg) == "cuda"
    assert actor_resources(cfg, 2) == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert actor_resources(cfg, 1) == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert actor_resources(cfg, 4) == {"num_gpus": 0.5, "num_cpus": 1.0}  # 4 actors share 2 GPUs
    assert resolve_device(Config(device="cpu")) == "cpu"


def test_train_workers_get_one_gpu_each(logical_gpus, tmp_path):
    from ghns.config import Config
    from ghns.train.runner import WorkerContext, fit

    def probe(config):  # defined here so Ray pickles it by value
        import json
        import os

        import ray
        import ray.train

        ctx = WorkerContext(config)
        out = {"rank": ctx.rank, "gpus": [str(g) for g in ray.get_gpu_ids()],
               "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": str(ctx.device)}
        with open(os.path.join(config["spec"]["out"], f"rank{ctx.rank}.json"), "w") as f:
            json.dump(out, f)
        ctx.report({"epoch": 0})

    cfg = Config(run_dir=str(tmp_path / "run"), workers=2, device="cuda")
    fit(probe, {"out": str(tmp_path)}, cfg, name="probe", history_file=tmp_path / "h.json")
    import json

    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(len(s["gpus"]) == 1 for s in seen)
    assert seen[0]["gpus"] != seen[1]["gpus"]  # two workers, two different GPUs
    import torch

    # logical GPUs without CUDA keep tensors on the CPU; on a machine with real GPUs each worker
    # computes on its own device
    want = {"cuda"} if torch.cuda.is_available() else {"cpu"}
    assert {s["device"].split(":")[0] for s in seen} == want


def test_data_actors_get_one_gpu_each(logical_gpus):
    import pandas as pd

    from ghns.config import Config
    from ghns.raykit import map_batches_pandas

    class Probe:
        def __init__(self):
            import ray

            self.gpus = ",".join(str(g) for g in ray.get_gpu_ids())

        def __call__(self, batch):
            return batch.assign(gpus=self.gpus)

    rows = pd.DataFrame({"i": range(40)})
    out = map_batches_pandas(rows, Probe, {}, Config(device="cuda"), actors=2, batch_size=5)
    assert out["i"].tolist() == list(range(40))
    assert all(len(g.split(",")) == 1 and g != "" for g in out["gpus"])
