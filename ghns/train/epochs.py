"""The one epoch skeleton of every training loop: resume, the epochs, the best epoch, reporting.

A loop (the localizer, stage 1's part networks, stage 3's classifiers, the study's parts
classifiers) builds its model, optimiser, schedule and random streams (a ``Training``), then hands
``run_epochs`` two functions: ``train_epoch()`` (one pass over its shard, returning its mean
losses) and ``evaluate()`` (its validation figures, and each val image's correctness where the
loop keeps a best epoch). ``run_epochs`` owns the rest, in one order for all of them:

1. resume from the last reported checkpoint (``resume``), or on a fresh start let the loop
   set its start (``start``: the linear probe of LP-FT) and offer it as epoch -1 to ``KeepBest``;
2. each epoch: fault injection (tests), ``train_epoch``, the schedule's epoch step, ``evaluate``,
   ``KeepBest``, the epoch's metrics and seconds, and the report (history line, progress line,
   Ray Train checkpoint of weights, optimiser, schedule, streams and best epoch);
3. the best epoch's weights put back into the model.

Training ends early when ``KeepBest``'s patience runs out (``KeepBest.stalled``): that epoch's
report is marked ``early_stop`` (a final one), and a resumed run that finds it so trains no more.

Where the loop runs decides what reporting means (``Host``): a Ray Train worker
(``runner.WorkerContext``), or a plain process that keeps nothing (``LOCAL``: the study's jobs,
tests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from ghns.train.streams import Streams



def training_state(model, opt, sched, epoch: int, streams, best=None) -> dict[str, Any]:
    """What a loop reports as its checkpoint after ``epoch``: weights, optimiser, schedule, random
    streams (``ghns.train.streams``) and, where the loop keeps one, its best epoch (``KeepBest``)."""
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "epoch": epoch, "streams": streams.state()}
    if best is not None:
        state["best"] = best.dump()
    return state


def resume(state: dict[str, Any] | None, model, opt, sched, streams, best=None,
           old_seed: Callable[[int], int] | None = None) -> int:
    """Load a ``training_state`` into the arguments; returns the epoch to start from (0 without
    one). A checkpoint of an older ghns (no saved streams) continues with the streams reseeded
    ``old_seed(start)`` (what that version did), or as they are when ``old_seed`` is None."""
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    if best is not None:
        best.load(state.get("best"))
    start = state["epoch"] + 1
    if "streams" in state:
        streams.load(state["streams"])
    elif old_seed is not None:
        streams.reseed(old_seed(start))
    return start


class Host(Protocol):
    """Where a loop's epochs run: the checkpoint it resumes, fault injection and reporting."""

    def restore(self) -> dict[str, Any] | None: ...

    def fail_once(self, epoch: int) -> None: ...

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None: ...


class _Local:
    """A plain process: nothing to resume, nothing injected, nothing reported."""

    def restore(self) -> dict[str, Any] | None:
        return None

    def fail_once(self, epoch: int) -> None:
        return None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        return None


LOCAL: Host = _Local()


class KeepBest:
    """The weights of the epoch with the best validation accuracy (the last epoch's when there
    is no validation split): short CPU runs at a constant learning rate end on a noisy epoch,
    and choosing on val keeps test untouched. The start (a probe, LP-FT) enters as epoch -1, and
    a later epoch replaces it only when strictly better on val and, given each val image's
    correctness, better beyond chance: the one-sided sign test of the epoch against the start on
    the val images they disagree on must reach ``p <= replace_start_p``. The best of a dozen
    noisy epochs on 150 images is otherwise often a lucky one (seed 1 of the CUB study in docs/results.md kept
    an epoch 2 images above its probe on val that fell 1.4 points below it on test).

    ``patience``: training stops once that many epochs in a row have not replaced the kept
    weights (0: never early). On a val split every fine-tuned epoch of the runs in docs/results.md lost to
    its probe start (synthetic and CUB-50), and the epochs after the first few only cost time.

    ``start="not_worse"`` turns the burden of proof around: the first fine-tuned epoch replaces
    the start unless the start beats it beyond chance on val (the same sign test, the other way);
    later epochs compete on val accuracy as usual (and must not lose to the start beyond chance
    either). Training whose purpose val accuracy cannot see (a loss on generated negatives that
    aims at rejecting near misses, not at top-1) then reaches the model it trains."""

    STARTS = ("better", "not_worse")

    def __init__(self, replace_start_p: float = 1.0, patience: int = 0, start: str = "better") -> None:
        if start not in self.STARTS:
            raise ValueError(f"unknown start rule {start!r}; expected one of {self.STARTS}")
        self.acc, self.epoch = float("-inf"), -1
        self.state: dict[str, torch.Tensor] | None = None
        self.replace_start_p = replace_start_p
        self.patience = patience
        self.start_rule = start
        self.start_correct: torch.Tensor | None = None

    def stalled(self, epoch: int) -> bool:
        """Whether training stops after ``epoch``: ``patience`` epochs since the kept one (the
        start counts as epoch -1), and something kept (without val nothing is, and every epoch
        runs)."""
        return self.patience > 0 and self.state is not None and epoch - self.epoch >= self.patience

    def beats_start(self, correct: torch.Tensor | None) -> bool:
        """Whether an epoch with these per-image val results may replace the start."""
        if self.start_correct is None or correct is None or self.replace_start_p >= 1.0:
            return True
        from ghns.stats import sign_test_greater

        new, old = correct.bool(), self.start_correct
        if self.start_rule == "not_worse":  # replaced unless the start is better beyond chance
            return sign_test_greater(int((old & ~new).sum()), int((new & ~old).sum())) > self.replace_start_p
        p = sign_test_greater(int((new & ~old).sum()), int((old & ~new).sum()))
        return p <= self.replace_start_p

    def update(self, model, acc: float, epoch: int, correct: torch.Tensor | None = None) -> None:
        """Offer ``model`` after ``epoch`` (-1: the start) with val accuracy ``acc`` and, where
        known, each val image's correctness (bool, in a fixed order)."""
        if acc != acc:  # NaN: no val split
            return
        if epoch < 0 and correct is not None:
            self.start_correct = correct.bool().clone()
        elif not self.beats_start(correct):
            return
        elif self.start_rule == "not_worse" and self.epoch < 0:
            self.acc = float("-inf")  # the start holds only until an epoch that is not worse
        if acc > self.acc:
            self.acc, self.epoch = acc, epoch
            self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def load(self, saved: dict | None) -> None:
        if saved:
            self.acc, self.epoch, self.state = saved["acc"], saved["epoch"], saved["state"]
            self.start_correct = saved.get("start_correct")

    def dump(self) -> dict:
        return {"acc": self.acc, "epoch": self.epoch, "state": self.state,
                "start_correct": self.start_correct}

    def apply(self, model) -> int | None:
        """Load the best weights into ``model``; returns the epoch they come from (-1: the start,
        before any training step; None: no val split, the last epoch's weights stay)."""
        if self.state is None:
            return None
        model.load_state_dict(self.state)
        return self.epoch


@dataclass
class Training:
    """What a loop trains and what its checkpoints hold. ``best``: keep the best val epoch
    (``evaluate`` then gives ``val_acc`` and each val image's correctness)."""

    model: torch.nn.Module
    opt: Any
    sched: Any
    streams: Streams
    best: KeepBest | None = None
    schedule_per_epoch: bool = True  # False: the loop steps its schedule per batch itself

    def state(self, epoch: int) -> dict[str, Any]:
        return training_state(self.model, self.opt, self.sched, epoch, self.streams, self.best)


Evaluation = tuple[dict[str, float], torch.Tensor | None]


def run_epochs(host: Host, t: Training, epochs: int, train_epoch: Callable[[], dict[str, float]],
               evaluate: Callable[[], Evaluation], *, start: Callable[[], None] | None = None,
               old_seed: Callable[[int], int] | None = None,
               extra: dict[str, Any] | None = None) -> int | None:
    """Train ``t`` for ``epochs`` (see the module's docstring); returns the epoch whose weights
    the model ends with when ``t.best`` keeps one (-1: the start), else None. ``old_seed``:
    how a checkpoint of an older ghns (no saved streams) reseeds them (``resume``);
    ``extra``: figures added to every epoch's metrics."""
    first = resume(host.restore(), t.model, t.opt, t.sched, t.streams, t.best, old_seed)
    if first == 0 and start is not None:
        start()
    if first == 0 and t.best is not None:
        t.model.eval()
        found, correct = evaluate()
        t.best.update(t.model, found["val_acc"], -1, correct)
    if first > 0 and t.best is not None and t.best.stalled(first - 1):
        epochs = first  # it stopped early before the interruption: nothing is left to train
    for epoch in range(first, epochs):
        host.fail_once(epoch)
        t0 = time.perf_counter()
        metrics = train_epoch()
        if t.schedule_per_epoch:
            t.sched.step()
        t.model.eval()
        found, correct = evaluate()
        metrics.update(found)
        if t.best is not None:
            t.best.update(t.model, metrics["val_acc"], epoch, correct)
        metrics.update({"epoch": epoch, "epoch_seconds": time.perf_counter() - t0, **(extra or {})})
        best = t.best
        stop = best is not None and epoch < epochs - 1 and best.stalled(epoch)
        if best is not None and stop:
            metrics["early_stop"] = best.patience
        host.report(metrics, t.state(epoch))
        if stop:
            break
    return t.best.apply(t.model) if t.best is not None else None
