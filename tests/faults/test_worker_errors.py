"""A user error raised inside a training loop (a Ray Train worker or a local run) reaches the user
as the same one line, with no training redone by the retries (a real worker, a real exception)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ghns.config import Config
from ghns.errors import StageError
from ghns.train.runner import fit

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.mark.parametrize("trainer", ["ray", "local"])
def test_a_worker_ghns_error_is_one_line_and_not_retried(tmp_path, ray_session, cli, trainer):
    attempts = tmp_path / "attempts.txt"

    def loop(config: dict) -> None:
        with open(config["spec"]["attempts"], "a") as f:
            f.write("started\n")
        raise StageError("the widget file is malformed (line 3)")

    cfg = Config(run_dir=str(tmp_path / "run"), workers=1, max_failures=2, device="cpu", trainer=trainer)
    with pytest.raises(StageError) as exc:
        fit(loop, {"attempts": str(attempts)}, cfg, name="failing")
    assert str(exc.value) == "the widget file is malformed (line 3)"
    assert attempts.read_text().count("started") == 1  # the retries started no new work


@pytest.mark.parametrize("trainer", ["ray", "local"])
def test_other_worker_errors_keep_their_traceback(tmp_path, ray_session, trainer):
    def loop(config: dict) -> None:
        raise ZeroDivisionError("a bug")

    cfg = Config(run_dir=str(tmp_path / "run"), workers=1, max_failures=0, device="cpu", trainer=trainer)
    with pytest.raises(Exception) as exc:
        fit(loop, {}, cfg, name="buggy")
    assert not isinstance(exc.value, StageError)
    assert "ZeroDivisionError" in repr(exc.value) or "a bug" in str(exc.value)
    assert not (Path(cfg.run_dir) / "ray" / "buggy" / "ghns_error.json").exists()
