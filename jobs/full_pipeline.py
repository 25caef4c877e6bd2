"""The whole GHNS pipeline as a Ray job.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/full_pipeline.py --config configs/cub_resnet50.yaml --run-dir /mnt/ghns/runs/cub

Takes exactly the options of ``ghns pipeline`` (``--config FILE.yaml`` and any flag overriding
it), plus ``--sync-to URI``. Inside ``ray job submit`` it joins the cluster it was submitted to
(Ray sets ``RAY_ADDRESS`` for the job): Ray Train stages use ``--workers`` workers (one GPU each
with ``--device cuda`` or when the cluster has GPUs), Ray Data stages ``--actors`` actors.

Where the run directory lives: every node reads and writes it (Ray Train workers write their
checkpoints and histories there), so on a multi-node cluster it must be a shared mount (the
example ``cluster.yaml`` mounts EFS at /mnt/ghns). ``--sync-to s3://bucket/runs/cub`` (any
pyarrow filesystem URI) in addition mirrors the run directory to object storage after every
stage and pulls it back first, so a re-submitted job resumes where the last one stopped.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

# The submitted checkout's ghns (``--working-dir``), ahead of any installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("ghns.job")


def split_sync_to(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--sync-to URI`` (or ``--sync-to=URI``) out of ``argv``."""
    rest, uri, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--sync-to":
            if i + 1 >= len(argv):
                raise SystemExit("error: --sync-to needs a URI")
            uri, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--sync-to="):
            uri = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return uri, rest


def run_dir_of(argv: list[str]) -> str:
    """The run directory ``ghns pipeline`` will use for ``argv`` (flag > config file > default)."""
    from ghns.config import resolve_config

    config, run_dir = None, None
    for i, arg in enumerate(argv):
        if arg in ("--config", "--run-dir") and i + 1 < len(argv):
            if arg == "--config":
                config = argv[i + 1]
            else:
                run_dir = argv[i + 1]
    return resolve_config(config, {"run_dir": run_dir}, use_run_dir=False).run_dir


def main(argv: list[str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    for name in ("ghns.job", "ghns.storage"):  # the stages log through ghns.cli's handler
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = False
    sync_to, args = split_sync_to(list(sys.argv[1:] if argv is None else argv))
    from ghns import pipeline
    from ghns.cli import main as cli_main

    from contextlib import nullcontext

    from ghns.rundir import RunDir

    local = Path(run_dir_of(args)) if sync_to else None
    # the pull and the pipeline under one hold of the run directory's lock (re-entrant)
    with RunDir(local).locked() if local is not None else nullcontext():
        if sync_to and local is not None:
            from ghns.errors import GHNSError
            from ghns.storage import Mirror, pull

            try:
                pulled = pull(sync_to, local)
            except GHNSError as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(2)
            log.info("run directory %s (%d files from %s)", local, pulled, sync_to)
            mirror = Mirror(local, sync_to)
            pipeline.AFTER_STAGE.append(lambda cfg, stage: mirror.push())
        start = time.perf_counter()
        log.info("ghns pipeline %s", " ".join(args))
        try:
            cli_main(["pipeline", *args])
        finally:
            log.info("job finished after %.0f s", time.perf_counter() - start)


if __name__ == "__main__":
    main()
