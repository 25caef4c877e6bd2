"""The parts classifier's pieces: the bank prefix and training runs (deterministic; the control
arm ignores the bank). The metric term of Eq. 10 is tested in ``tests/test_losses.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ghns.train_final.parts import (NegativeBank, PartsData, PartsSettings, build_parts_classifier,
                               fit_parts_classifier, parts_probe)


def test_bank_prefix_is_the_first_negatives_of_each_class(tmp_path):
    from ghns.generate.bank import write_shard

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 3, 2)).astype(np.float32)
    ids, labels = np.arange(10, 16), np.array([0, 0, 0, 1, 1, 1])
    write_shard(tmp_path, 0, ids, labels, np.array([0, 1, 2]), np.array([[3, 0, 0], [1, 4, 1], [2, 2, 5]]),
                np.array([[0, -1, -1], [-1, 0, -1], [-1, -1, 0]]), np.array([0.9, 0.8, 0.7]), emb, {})
    write_shard(tmp_path, 1, ids, labels, np.array([3, 4]), np.array([[0, 3, 3], [4, 1, 4]]),
                np.array([[0, -1, -1], [-1, 0, -1]]), np.array([0.6, 0.5]), emb, {})
    full = NegativeBank.read(tmp_path, 6)
    first = NegativeBank.read(tmp_path, 6, per_class=1)
    assert len(full) == 5 and len(first) == 2
    assert torch.equal(first.x[0], full.x[0]) and torch.equal(first.x[1], full.x[3])
    assert sorted(first.by_ref) == [10, 13] and sorted(full.by_class) == [0, 1]
    assert len(NegativeBank.read(tmp_path / "none", 6)) == 0


def tiny_data(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 12))
    y = np.repeat(np.arange(4), 10)
    x = centres[y] + 0.8 * rng.normal(size=(40, 12))
    vy = np.repeat(np.arange(4), 3)
    vx = centres[vy] + 0.8 * rng.normal(size=(12, 12))
    return PartsData(torch.tensor(x, dtype=torch.float32), torch.tensor(y), np.arange(100, 140),
                     torch.tensor(vx, dtype=torch.float32), torch.tensor(vy), 3, 4)


SETTINGS = PartsSettings(parts_hidden=16, lambda_parts=0.75, quad_m1=0.4, quad_m2=0.2,
                         parts_epochs=4, parts_lr=0.05, optimizer="sgd", weight_decay=5e-4,
                         lr_step_epochs=40, lr_gamma=0.1, batch_classes=2, batch_images=4)


def test_one_training_run_is_deterministic_and_the_control_ignores_the_bank():
    data = tiny_data()
    bank = NegativeBank(torch.randn(6, 12), by_class={0: np.arange(3), 1: np.arange(3, 6)})
    host = _Host()
    model_a, best_a = fit_parts_classifier(data, bank, SETTINGS, 4, seed=3, use_negatives=True, host=host)
    seen = host.reported
    model_b, _ = fit_parts_classifier(data, bank, SETTINGS, 4, seed=3, use_negatives=True)
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)
    assert [m["epoch"] for m in seen] == [0, 1, 2, 3] and all(m["bank_size"] == 6 for m in seen)
    start = parts_probe(data, 4).val_accuracy
    accs = {-1: start, **{e: seen[e]["val_acc"] for e in range(4)}}
    assert best_a.epoch == max(accs, key=lambda e: (accs[e], -e))
    control, _ = fit_parts_classifier(data, bank, SETTINGS, 4, seed=3, use_negatives=False)
    empty, _ = fit_parts_classifier(data, NegativeBank.empty(12), SETTINGS, 4, seed=3, use_negatives=True)
    for a, b in zip(control.state_dict().values(), empty.state_dict().values()):
        assert torch.equal(a, b)


def test_the_untrained_parts_classifier_is_the_probe():
    """LP-FT: before any fine-tuning step the classifier reproduces the probe's logits and its
    val accuracy."""
    data = tiny_data(1)
    probe = parts_probe(data, 4)
    model = build_parts_classifier(data, SETTINGS, 4)
    model.start_from(probe)
    with torch.no_grad():
        logits = model(data.val_x)[1]
    assert torch.allclose(logits, probe.logits(data.val_x), atol=1e-5)
    acc = 100.0 * (logits.argmax(1) == data.val_y).float().mean().item()
    assert acc == pytest.approx(probe.val_accuracy)


def test_fine_tuning_that_does_not_beat_the_start_keeps_the_probe():
    """A learning rate that wrecks the classifier on the first step: every epoch is worse than
    the start on val, so the start (epoch -1) is what comes back."""
    from dataclasses import replace

    data = tiny_data(2)
    probe = parts_probe(data, 4)
    assert probe.val_accuracy > 50
    model, best = fit_parts_classifier(data, NegativeBank.empty(12), replace(SETTINGS, parts_lr=1e4),
                                       4, seed=0, use_negatives=False, probe=probe)
    assert best.epoch == -1 and best.acc == pytest.approx(probe.val_accuracy)
    with torch.no_grad():
        assert torch.allclose(model(data.val_x)[1], probe.logits(data.val_x), atol=1e-5)


class _Host:
    """A worker context as the epoch skeleton sees it: a checkpoint to resume (``blob``), every
    report kept (metrics, and the checkpoint bytes of ``keep_epoch``)."""

    def __init__(self, blob: bytes | None = None, keep_epoch: int | None = None) -> None:
        self.blob, self.keep_epoch = blob, keep_epoch
        self.reported: list[dict] = []
        self.kept: bytes | None = None

    def restore(self):
        import io

        return None if self.blob is None else torch.load(io.BytesIO(self.blob), weights_only=True)

    def fail_once(self, epoch: int) -> None:
        pass

    def report(self, metrics, state=None) -> None:
        import io

        self.reported.append(dict(metrics))
        if metrics["epoch"] == self.keep_epoch:  # what the Ray Train worker reports
            buf = io.BytesIO()
            torch.save(state, buf)
            self.kept = buf.getvalue()


def test_a_run_resumed_from_its_checkpoint_ends_bitwise_equal_to_one_never_interrupted():
    import io

    data = tiny_data()
    bank = NegativeBank(torch.randn(6, 12), by_class={0: np.arange(3), 1: np.arange(3, 6)})

    def fit(host):
        torch.manual_seed(1234)  # a restarted worker's global generator is not where it was
        return fit_parts_classifier(data, bank, SETTINGS, 4, seed=3, use_negatives=True, host=host)[0]

    def later_losses(host) -> list[float]:
        return [m["loss"] for m in host.reported if m["epoch"] >= 2]

    first = _Host(keep_epoch=1)
    uninterrupted = fit_parts_classifier(data, bank, SETTINGS, 4, seed=3, use_negatives=True, host=first)[0]
    assert first.kept is not None
    second = _Host(first.kept)
    resumed = fit(second)
    assert [m["epoch"] for m in second.reported] == [2, 3]  # it went on from epoch 1's checkpoint
    assert later_losses(second) == later_losses(first)  # epochs 2 and 3, drawn as they were
    for a, b in zip(uninterrupted.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # a checkpoint of an older ghns (no streams) resumes with other draws: the streams matter
    old = torch.load(io.BytesIO(first.kept), weights_only=True)
    del old["streams"]
    buf = io.BytesIO()
    torch.save(old, buf)
    other = _Host(buf.getvalue())
    fit(other)
    assert len(later_losses(other)) == 2 and later_losses(other) != later_losses(first)


def test_streams_survive_a_weights_only_checkpoint():
    import io

    from ghns.train.streams import Streams

    streams = Streams(7)
    torch.rand(3, generator=streams.torch), streams.numpy.random(), torch.rand(1)  # move every stream on
    buf = io.BytesIO()
    torch.save({"streams": streams.state()}, buf)
    want = (torch.randint(0, 10**6, (4,), generator=streams.torch), streams.numpy.integers(10**6, size=4),
            torch.rand(4))
    back = Streams(0)
    back.load(torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["streams"])
    got = (torch.randint(0, 10**6, (4,), generator=back.torch), back.numpy.integers(10**6, size=4),
           torch.rand(4))
    assert torch.equal(want[0], got[0]) and (want[1] == got[1]).all() and torch.equal(want[2], got[2])


def test_resume_loads_a_training_state_and_reseeds_an_old_one():
    from ghns.train.epochs import resume, training_state
    from ghns.train.streams import Streams

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    streams = Streams(5)
    assert resume(None, model, opt, sched, streams) == 0
    state = training_state(model, opt, sched, 3, streams)
    assert resume(state, model, opt, sched, Streams(1)) == 4
    old = {k: v for k, v in state.items() if k != "streams"}  # an older ghns: no streams saved
    again = Streams(1)
    assert resume(old, model, opt, sched, again, old_seed=lambda start: 9 + start) == 4
    assert again.numpy.integers(10**6) == Streams(13).numpy.integers(10**6)
