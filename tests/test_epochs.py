"""The epoch skeleton every training loop runs (``ghns.train.epochs.run_epochs``)."""

from __future__ import annotations

import io

import torch

from ghns.train.epochs import KeepBest, Training, run_epochs
from ghns.train.streams import Streams


class Host:
    """A worker context as the skeleton sees it, writing down what it is asked to do."""

    def __init__(self, state=None) -> None:
        self.state, self.calls, self.saved = state, [], {}

    def restore(self):
        self.calls.append("restore")
        return self.state

    def fail_once(self, epoch: int) -> None:
        self.calls.append(f"fail_once {epoch}")

    def report(self, metrics, state=None) -> None:
        self.calls.append(f"report {metrics['epoch']}")
        buf = io.BytesIO()
        torch.save(state, buf)
        self.saved[metrics["epoch"]] = (dict(metrics), buf.getvalue())


def _training(best: bool):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    return Training(model, opt, sched, Streams(3), KeepBest() if best else None)


def _loop(host: Host, t: Training, accs: list[float], calls: list[str]):
    def train_epoch():
        calls.append("train")
        with torch.no_grad():
            t.model.weight += torch.rand(1, 2, generator=t.streams.torch)
        t.opt.step()
        return {"loss": float(t.model.weight.detach().sum())}

    def evaluate():
        calls.append("evaluate")
        return {"val_acc": accs[len([c for c in calls if c == "evaluate"]) - 1]}, None

    return run_epochs(host, t, 4, train_epoch, evaluate, start=lambda: calls.append("start"),
                      extra={"bank_size": 7})


def test_epochs_run_in_one_order_and_keep_the_best_val_epoch():
    host, t, calls = Host(), _training(best=True), []
    kept = _loop(host, t, [50.0, 40.0, 70.0, 60.0, 65.0], calls)
    # the start is offered as epoch -1 (50), then epochs 0-3 score 40, 70, 60, 65: epoch 1 wins
    assert kept == 1 and t.best.epoch == 1 and t.best.acc == 70.0
    assert calls == ["start", "evaluate"] + ["train", "evaluate"] * 4
    assert host.calls == ["restore"] + [f"{c} {e}" for e in range(4) for c in ("fail_once", "report")]
    metrics, _ = host.saved[3]
    assert list(metrics) == ["loss", "val_acc", "epoch", "epoch_seconds", "bank_size"]
    assert t.sched.last_epoch == 4  # one schedule step per epoch
    saved_w = torch.load(io.BytesIO(host.saved[1][1]), weights_only=True)["model"]["weight"]
    assert torch.equal(t.model.weight.detach(), saved_w)  # the model ends with epoch 1's weights


def test_a_resumed_run_skips_the_start_and_ends_as_one_never_interrupted():
    whole = Host()
    uninterrupted = _training(best=False)
    assert _loop(whole, uninterrupted, [1.0] * 9, []) is None  # no best kept: the last epoch stays
    state = torch.load(io.BytesIO(whole.saved[1][1]), weights_only=True)
    resumed, calls, host = _training(best=False), [], Host(state)
    torch.manual_seed(99)  # a restarted worker's global generator is elsewhere: the streams are saved
    _loop(host, resumed, [1.0] * 9, calls)
    assert "start" not in calls and host.calls[1:] == ["fail_once 2", "report 2", "fail_once 3", "report 3"]
    assert torch.equal(uninterrupted.model.weight, resumed.model.weight)
    assert host.saved[3][0]["loss"] == whole.saved[3][0]["loss"]
