"""The epoch skeleton every training loop runs (``ghns.train.epochs.run_epochs``)."""

from __future__ import annotations

import io

import pytest
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


def _training(best: bool, patience: int = 0):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    return Training(model, opt, sched, Streams(3), KeepBest(patience=patience) if best else None)


def _loop(host: Host, t: Training, accs: list[float], calls: list[str], epochs: int = 4):
    def train_epoch():
        calls.append("train")
        with torch.no_grad():
            t.model.weight += torch.rand(1, 2, generator=t.streams.torch)
        t.opt.step()
        return {"loss": float(t.model.weight.detach().sum())}

    def evaluate():
        calls.append("evaluate")
        return {"val_acc": accs[len([c for c in calls if c == "evaluate"]) - 1]}, None

    return run_epochs(host, t, epochs, train_epoch, evaluate, start=lambda: calls.append("start"),
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


def test_patience_stops_once_that_many_epochs_have_not_replaced_the_kept_weights():
    host, t, calls = Host(), _training(best=True, patience=2), []
    # start 50; epochs 0-7 score 40, 60, 55, 58, 90, ...: epoch 1 is kept, epochs 2 and 3 do not
    # replace it, so training stops after epoch 3 (the 90 of epoch 4 is never seen)
    kept = _loop(host, t, [50.0, 40.0, 60.0, 55.0, 58.0, 90.0, 90.0, 90.0, 90.0], calls, epochs=8)
    assert kept == 1 and calls.count("train") == 4
    assert host.calls[-1] == "report 3" and host.saved[3][0]["early_stop"] == 2
    assert all("early_stop" not in host.saved[e][0] for e in range(3))

    # the start kept: patience epochs are trained, then none
    host, t, calls = Host(), _training(best=True, patience=3), []
    assert _loop(host, t, [50.0] * 9, calls, epochs=8) == -1 and calls.count("train") == 3

    # a stop at the last epoch is no early stop; patience 0 runs every epoch
    host, t, calls = Host(), _training(best=True, patience=4), []
    _loop(host, t, [50.0] * 9, calls, epochs=4)
    assert calls.count("train") == 4 and "early_stop" not in host.saved[3][0]
    host, t, calls = Host(), _training(best=True, patience=0), []
    assert _loop(host, t, [50.0] * 9, calls, epochs=8) == -1 and calls.count("train") == 8


def test_without_val_patience_never_stops_and_a_resumed_stalled_run_trains_no_more():
    host, t, calls = Host(), _training(best=True, patience=1), []
    _loop(host, t, [float("nan")] * 9, calls, epochs=5)  # no val split: nothing is kept
    assert calls.count("train") == 5

    host, t = Host(), _training(best=True, patience=2)
    _loop(host, t, [50.0] * 9, [], epochs=8)
    assert sorted(host.saved) == [0, 1]
    state = torch.load(io.BytesIO(host.saved[1][1]), weights_only=True)  # killed after that report
    resumed, calls, again = _training(best=True, patience=2), [], Host(state)
    assert _loop(again, resumed, [50.0] * 9, calls, epochs=8) == -1
    assert calls == [] and again.calls == ["restore"]
    assert torch.equal(resumed.model.weight, t.model.weight)  # the start, put back


def test_not_worse_start_rule_keeps_a_fine_tuned_epoch_unless_the_probe_beats_it_beyond_chance():
    model = torch.nn.Linear(2, 2)
    n = 40
    start = torch.ones(n, dtype=torch.bool)
    start[:6] = False  # the probe: 34 of 40 right

    def offered(rule, correct_list, p=0.05):
        best = KeepBest(p, 0, rule)
        best.update(model, 100.0 * start.float().mean().item(), -1, start)
        for epoch, correct in enumerate(correct_list):
            best.update(model, 100.0 * correct.float().mean().item(), epoch, correct)
        return best.epoch

    slightly_worse = start.clone()
    slightly_worse[6:8] = False  # 32 of 40: the probe is better, but not beyond chance
    much_worse = start.clone()
    much_worse[6:16] = False  # 24 of 40: the probe is better beyond chance
    better = start.clone()
    better[:2] = True
    assert offered("better", [slightly_worse]) == -1
    assert offered("not_worse", [slightly_worse]) == 0
    assert offered("not_worse", [much_worse]) == -1
    # later epochs compete on val as usual, and none may lose to the probe beyond chance
    assert offered("not_worse", [slightly_worse, better]) == 1
    assert offered("not_worse", [slightly_worse, much_worse]) == 0
    with pytest.raises(ValueError, match="unknown start rule"):
        KeepBest(0.05, 0, "sometimes")
