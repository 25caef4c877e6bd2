"""Worker shards: interleaved over a class-ordered split, and the same number of DDP steps on
every worker even when the split does not divide evenly (a real 2-worker gloo group)."""

from __future__ import annotations

import signal

import pytest
import torch

from ghns.config import Config
from ghns.train.runner import WorkerContext, fit
from ghns.train.specs import WorkerSpec

pytestmark = pytest.mark.faults


def test_shards_interleave_and_cover_every_item_once():
    labels = [c for c in range(5) for _ in range(19)]  # 95 items ordered by class
    shares = []
    for rank in range(2):
        ctx = WorkerContext(WorkerSpec())
        ctx.rank, ctx.world = rank, 2
        shares.append(list(range(95))[ctx.shard(95)])
    assert sorted(shares[0] + shares[1]) == list(range(95))
    assert abs(len(shares[0]) - len(shares[1])) <= 1
    for share in shares:  # every worker sees every class
        assert {labels[i] for i in share} == set(range(5))


def _uneven_loop(config: dict) -> None:
    ctx = WorkerContext(config)
    items = torch.arange(95)[ctx.shard(95)]  # 48 on rank 0, 47 on rank 1
    batches = [items[i:i + 47] for i in range(0, len(items), 47)]  # 2 batches against 1
    model = ctx.wrap(torch.nn.Linear(1, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    steps = 0
    for batch in batches[:ctx.common_steps(len(batches))]:
        loss = model(batch.float()[:, None]).pow(2).mean()
        opt.zero_grad()
        loss.backward()  # a collective under DDP: an extra step on one worker would hang
        opt.step()
        steps += 1
    ctx.report({"epoch": 0, "steps": steps, "rank_items": len(items)})


@pytest.mark.slow
def test_two_workers_with_an_uneven_split_finish(tmp_path, ray_session):
    def give_up(*_):
        raise TimeoutError("the 2-worker group hung on unequal step counts")

    old = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(420)
    try:
        result = fit(_uneven_loop, {}, Config(run_dir=str(tmp_path / "run"), workers=2, device="cpu"),
                     name="uneven", history_file=tmp_path / "history.json", epochs=1)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    # rank 0 holds 48 items, 2 batches of its own, and took the 1 step rank 1 could match
    assert result.history[-1]["rank_items"] == 48 and result.history[-1]["steps"] == 1
