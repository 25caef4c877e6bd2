"""Pieces of the training runner that need no Ray: report throttling, keeping the best epoch."""

from __future__ import annotations

import torch

from ghns.train.specs import WorkerSpec


def test_reports_to_ray_are_throttled_but_the_last_epoch_always_goes(monkeypatch):
    from ghns.train import runner

    clock = [100.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    ctx = runner.WorkerContext(WorkerSpec(epochs=5, report_seconds=10))
    assert not ctx._due({"epoch": 0})
    clock[0] += 10
    assert ctx._due({"epoch": 1})  # 10 s since the start
    ctx._last_report = clock[0]
    assert not ctx._due({"epoch": 2})
    assert ctx._due({"epoch": 4})  # the last epoch
    assert runner.WorkerContext(WorkerSpec(report_seconds=0))._due({"epoch": 0})
    assert runner.WorkerContext(WorkerSpec())._due({"epoch": 3})  # no epoch count known: every epoch


def test_keep_best_keeps_the_best_validation_epoch():
    from ghns.train.epochs import KeepBest

    model = torch.nn.Linear(2, 1)
    best = KeepBest()
    for epoch, acc in enumerate([50.0, 70.0, float("nan"), 60.0]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        best.update(model, acc, epoch)
    assert best.apply(model) == 1 and float(model.weight[0, 0].detach()) == 1.0
    restored = KeepBest()
    restored.load(best.dump())
    assert restored.epoch == 1 and restored.acc == 70.0
    empty = KeepBest()
    empty.update(model, float("nan"), 0)
    assert empty.apply(model) is None  # no validation: the last weights stay


def test_keep_best_replaces_the_start_only_beyond_chance_on_val():
    from ghns.train.epochs import KeepBest

    model = torch.nn.Linear(2, 1)
    start = torch.tensor([True] * 140 + [False] * 10)  # the probe: 140 of 150 right

    def epoch(fixed: int, broken: int) -> torch.Tensor:
        c = start.clone()
        c[140:140 + fixed] = True
        c[:broken] = False
        return c

    best = KeepBest(replace_start_p=0.05)
    with torch.no_grad():
        model.weight.fill_(-1)
    best.update(model, 100 * start.float().mean().item(), -1, start)
    for e, (fixed, broken) in enumerate([(3, 1), (4, 0), (6, 3)]):  # +2, +4, +3 images: luck
        with torch.no_grad():
            model.weight.fill_(e)
        c = epoch(fixed, broken)
        best.update(model, 100 * c.float().mean().item(), e, c)
    assert best.epoch == -1 and best.apply(model) == -1 and float(model.weight[0, 0]) == -1.0
    restored = KeepBest(replace_start_p=0.05)
    restored.load(best.dump())  # a resumed run judges against the same start
    c = epoch(5, 0)  # 5 fixed, none broken: p = 1/32
    with torch.no_grad():
        model.weight.fill_(7)
    restored.update(model, 100 * c.float().mean().item(), 7, c)
    assert restored.apply(model) == 7
    lenient = KeepBest()  # replace_start_p=1: any val gain replaces the start, as before
    lenient.update(model, 93.33, -1, start)
    lenient.update(model, 94.67, 0, epoch(3, 1))
    assert lenient.epoch == 0


def test_one_progress_line_per_epoch_from_the_main_worker(capsys):
    from ghns.train import runner

    ctx = runner.WorkerContext(WorkerSpec(epochs=4, progress=True, run_name="train-final_original"))
    ctx.report({"epoch": 1, "loss": 0.5, "val_acc": 91.25, "epoch_seconds": 2.0})
    line = capsys.readouterr().out.strip()
    assert line.startswith("train-final_original: epoch 2/4  loss 0.5000  val_acc 91.25")
    assert line.endswith("s left")
    runner.WorkerContext(WorkerSpec(epochs=4)).report({"epoch": 0, "loss": 0.5})  # progress off
    worker = runner.WorkerContext(WorkerSpec(epochs=4, progress=True))
    worker.rank = 1  # only the main worker speaks
    worker.report({"epoch": 0, "loss": 0.5})
    assert capsys.readouterr().out == ""


def test_one_cpu_worker_on_a_local_ray_trains_in_this_process(monkeypatch):
    import pytest

    from ghns.config import Config
    from ghns.errors import ConfigError
    from ghns.train.runner import trains_locally

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert trains_locally(Config(device="cpu"))
    assert not trains_locally(Config(device="cpu", workers=2))  # a group: Ray Train
    assert not trains_locally(Config(device="cuda"))  # GPUs: Ray Train places them
    assert not trains_locally(Config(device="cpu", ray_address="10.0.0.1:6379"))  # a cluster
    assert not trains_locally(Config(device="cpu", trainer="ray"))
    assert trains_locally(Config(device="cuda", trainer="local"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # inside 'ray job submit'
    assert not trains_locally(Config(device="cpu"))
    monkeypatch.delenv("RAY_ADDRESS")
    import ghns.raykit

    monkeypatch.setattr(ghns.raykit, "cluster_nodes", lambda: 3)  # joined a cluster some other way
    assert not trains_locally(Config(device="cpu"))
    with pytest.raises(ConfigError, match="trainer"):
        Config(trainer="local", workers=2)


def test_bf16_autocast_only_where_the_hardware_computes_it(monkeypatch):
    from ghns.train import runner

    lines = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {}\nbogomips\t: 4000\n"
    assert runner.cpu_has_native_bf16(lines.format("avx512f avx512_bf16"))
    assert runner.cpu_has_native_bf16(lines.format("amx_tile amx_bf16"))
    assert not runner.cpu_has_native_bf16(lines.format("avx512f avx512bw"))  # would be emulated
    assert not runner.cpu_has_native_bf16("model name\t: avx512_bf16 in a name, not a flag\n")

    net = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    for native in (True, False):
        monkeypatch.setattr(runner, "cpu_has_native_bf16", lambda native=native: native)
        for amp in (True, False):
            ctx = runner.WorkerContext(WorkerSpec(amp=amp))
            assert ctx.amp == (amp and native)
            with ctx.autocast():
                out = net(x)
            assert out.dtype == (torch.bfloat16 if amp and native else torch.float32)
            with ctx.autocast(cached=True):  # heads over stored frozen-trunk outputs: float32
                assert net(x).dtype == torch.float32


def _counting_loop(config: dict) -> None:
    """A loop for ``fit_all``: 3 epochs with a checkpoint each, writing its output at the end;
    the spec's ``fail_at`` epoch raises once (a marker file remembers), as a dying worker."""
    import json
    from pathlib import Path

    from ghns.train.runner import WorkerContext

    spec, ctx = config["spec"], WorkerContext(config)
    state = ctx.restore()
    start = 0 if state is None else state["epoch"] + 1
    for epoch in range(start, 3):
        marker = Path(spec["marker"])
        if epoch == spec.get("fail_at") and not marker.exists():
            marker.write_text("failed")
            raise RuntimeError("injected")
        ctx.report({"epoch": epoch, "loss": float(epoch)}, {"epoch": epoch})
    log = Path(spec["log"])
    log.write_text(log.read_text() + json.dumps([ctx.run_name, start]) + "\n" if log.is_file()
                   else json.dumps([ctx.run_name, start]) + "\n")
    Path(spec["output"]).write_text("done")


def test_fit_all_trains_the_pending_jobs_in_order_and_resumes_the_interrupted_one(tmp_path):
    import json

    from ghns.config import Config
    from ghns.train.runner import FitJob, fit_all

    cfg = Config(run_dir=str(tmp_path / "run"), trainer="local", max_failures=1, quiet=True)
    log = tmp_path / "log"

    def job(name: str, **extra) -> FitJob:
        out = tmp_path / f"{name}.out"
        spec = {"log": str(log), "output": str(out), "marker": str(tmp_path / f"{name}.failed"), **extra}
        return FitJob(_counting_loop, spec, name, tmp_path / f"{name}.history.json", out, epochs=3)

    (tmp_path / "a.out").write_text("done")  # done before: skipped
    results = fit_all([job("a"), job("b", fail_at=2), job("c")], cfg, name="all", report_seconds=0)
    runs = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    assert runs == [("b", 2), ("c", 0)]  # b resumed at its failed epoch from its own checkpoint; c from 0
    assert [len(r.history) for r in results] == [0, 3, 3]
    assert [h["epoch"] for h in results[1].history] == [0, 1, 2]
