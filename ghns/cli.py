"""The ``ghns`` command line.

Options that set configuration are generated from ``ghns.config.Config`` (``with_config``), so a
flag and its YAML key are the same name by construction. A user mistake (bad flag, bad value,
missing path, malformed file) prints ``error: <one line>`` and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

try:  # typer >= 0.25 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from ghns.config import Config, resolve_config
from ghns.errors import GHNSError
from ghns.stages import STAGES, Stage

log = logging.getLogger("ghns")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="GHNS: hard-negative feature generation for fine-grained recognition.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Inspect datasets and catalogs.")
show_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Pictures of a run: part boxes, hard negatives.")
app.add_typer(data_app, name="data")
app.add_typer(show_app, name="show")

CONFIG_OPTION = typer.Option(None, "--config", help="YAML file whose keys are these flags.")


def with_config(*sections: str, exclude: tuple[str, ...] = (), use_run_dir: bool = True,
                shown: tuple[str, ...] | None = None) -> Callable:
    """Add one ``--flag`` per Config field of ``sections`` to a command.

    The command receives ``cfg``: defaults < run dir's config.yaml < --config file < flags
    (the run dir's saved config is skipped with ``use_run_dir=False``). ``shown``: the sections
    or field names whose flags ``--help`` lists (all when None); the others are still read, and
    ``ghns config --help`` lists every one.
    """
    fields = [f for f in dataclasses.fields(Config)
              if f.metadata.get("section") in sections and f.name not in exclude]

    def listed(f: dataclasses.Field) -> bool:
        return shown is None or f.name in shown or f.metadata.get("section") in shown

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != "cfg"]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            overrides = {f.name: kwargs.pop(f.name) for f in fields}
            config_file = kwargs.pop("config")
            cfg = resolve_config(config_file, overrides, use_run_dir=use_run_dir)
            if cfg.quiet:  # stage and epoch progress lines off; warnings and results stay
                log.setLevel(logging.WARNING)
            return fn(cfg=cfg, **kwargs)

        params = own + [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY,
                                          default=CONFIG_OPTION, annotation=Optional[str])]
        for f in fields:
            typ, _ = _scalar_type(f)
            flag = "--" + f.name.replace("_", "-")
            decls = [f"{flag}/--no-{flag[2:]}"] if typ is bool else [flag]
            help_text = f.metadata["help"]
            if f.metadata.get("choices"):
                help_text += f" [{'|'.join(f.metadata['choices'])}]"
            help_text += f" (default: {f.default})"
            params.append(inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, *decls, help=help_text, show_default=False, hidden=not listed(f)),
                annotation=Optional[typ]))
        setattr(wrapper, "__signature__", sig.replace(parameters=params))  # what typer reads
        return wrapper

    return deco


def _scalar_type(f: dataclasses.Field) -> tuple[type, bool]:
    from ghns.config import _base_type

    return _base_type(f.type)


# -- data ------------------------------------------------------------------------------------

@data_app.command("info")
@with_config("catalog", use_run_dir=False)
def data_info(cfg: Config) -> None:
    """Print a dataset's classes and per-split image counts (no run directory is written)."""
    from ghns.data import build_catalog

    catalog = build_catalog(cfg)
    print_catalog_summary(catalog)


def print_catalog_summary(catalog) -> None:
    counts = catalog.counts()
    width = max(10, min(48, max(len(c) for c in catalog.classes)))
    typer.echo(f"dataset: {catalog.dataset}   root: {catalog.info.get('root')}")
    typer.echo(f"{len(catalog.classes)} classes   val: {catalog.info.get('val')}")
    typer.echo(f"{'label':>5}  {'class':<{width}} {'train':>6} {'val':>6} {'test':>6}")
    for label, row in counts.iterrows():
        typer.echo(f"{label:>5}  {row['class_name'][:width]:<{width}} {row['train']:>6} "
                   f"{row['val']:>6} {row['test']:>6}")
    totals = counts[["train", "val", "test"]].sum()
    typer.echo(f"{'':>5}  {'total':<{width}} {totals['train']:>6} {totals['val']:>6} "
               f"{totals['test']:>6}")
    skipped = catalog.info.get("skipped") or {}
    if skipped:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))
        typer.echo(f"skipped images: {sum(skipped.values())} ({reasons}); see the log for paths")
    dups = catalog.info.get("duplicate_groups") or []
    if dups:
        typer.echo(f"byte-identical images: {len(dups)} group(s), "
                   f"{catalog.info.get('duplicates_across_splits', 0)} across splits "
                   f"(image ids {dups[0]}{' ...' if len(dups) > 1 else ''})")


# -- pipeline and stages ---------------------------------------------------------------------

FORCE = typer.Option(False, "--force", help="Redo this stage even if it is done.")

ALL_SECTIONS = tuple(s.name for s in STAGES) + ("run",)  # every stage's settings, and the run's


@app.command()
@with_config(*ALL_SECTIONS)
def pipeline(cfg: Config, force: bool = typer.Option(False, "--force",
                                                       help="Redo every stage.")) -> None:
    """Run every stage in one run directory, skipping those already done; print the report."""
    from ghns.pipeline import run_until
    from ghns.rundir import RunDir
    from ghns.stages import NAMES

    last = NAMES[-1]
    run = RunDir(cfg.run_dir)
    with run.locked():  # held across the stages (run_until takes it again, re-entrantly)
        if force:
            for name in NAMES:
                run_until(cfg, name, force=True)
        else:
            run_until(cfg, last)
    for name in ("localize", "train-parts", "generate", "evaluate"):
        print_figures(run, name)


@app.command("config")
@with_config(*ALL_SECTIONS)
def show_config(cfg: Config) -> None:
    """Print the configuration a command would run with (defaults < the run directory's
    config.yaml < --config < flags), as YAML that --config reads back. Runs nothing."""
    import yaml

    typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())


def print_figures(run, name: str) -> None:
    """Stage ``name``'s figures on the console (nothing where it has not written them)."""
    import json

    from ghns.stages import stage

    path = getattr(run, stage(name).figures)
    if path.is_file():
        PRINTERS[name](json.loads(path.read_text()), run)


def print_report(report: dict[str, Any], run) -> None:
    if run.report_md.is_file():
        typer.echo(run.report_md.read_text().rstrip())
        typer.echo(f"(report: {run.report_json}, {run.report_md})")


def print_train_final(figures: dict[str, Any], run) -> None:
    for name, f in figures["models"].items():
        typer.echo(f"  {name:<16} val top-1 {f['val_accuracy']}  ({f['epochs']} epochs, {f['seconds']} s)")


def print_generate(f: dict[str, Any], run) -> None:
    st = f["settings"]
    typer.echo(f"generate: {f['kept']} hard negatives for {f['classes']} classes "
               f"(per class {st['per_class']}, tau {st['tau']}, {st['neighbors']} neighbours, "
               f"{f['actors']} actor(s), {f['seconds']} s)")
    typer.echo(f"  candidates scored {f['candidates']} ({f['fully_scored']} needed a full softmax), "
               f"pass rate {f['pass_rate']}")
    lookup = f.get("lookup") or {}
    if lookup.get("kind"):
        recall = "" if lookup.get("recall", 1.0) == 1.0 else f", recall {lookup['recall']} against exact search"
        typer.echo(f"  part lookup: {lookup['kind']} ({lookup.get('index_mb', 0)} MB index{recall}); "
                   f"embedding store {lookup.get('store_mb')} MB")
    fill = f["fill"]
    typer.echo(f"  classes filled: {fill['full']} of {f['classes']}; fill mean {fill['mean']}, "
               f"min {fill['min']}")
    if f.get("filternet_temperature") is not None:
        typer.echo(f"  FilterNet temperature (fitted on val): {f['filternet_temperature']:.3g}; "
                   f"band quantile {st.get('band_quantile', 1.0)}")
    sim = f.get("swap_similarity")
    if sim and sim.get("inside_own_spread") is not None:
        typer.echo(f"  swapped parts at least as similar as their class's own median pair (likely "
                   f"false negatives): {sim['inside_own_spread']}")
    if f.get("purity"):
        p = f["purity"]
        typer.echo(f"  purity (every swapped part of another variant; synthetic ground truth): "
                   f"{p['overall']}; classes full with purity >= 0.9: {p['classes_pure']} of "
                   f"{f['classes']}; same-variant sets {f['same_variant_rate']}")
    for s in f["short"][:10]:
        typer.echo(f"  short: {s['class']}: {s['kept']} kept, {s['reason']}")
    if len(f["short"]) > 10:
        typer.echo(f"  ... and {len(f['short']) - 10} more classes short (see {run.generate_json})")


def print_train_parts(f: dict[str, Any], run) -> None:
    w, parts = f["loss_weights"], f["val_accuracy_parts"]
    typer.echo("\n".join([
        f"train-parts: {f['backbone']} part networks (stage 1), crops {f['part_image_size']} px, alpha "
        f"{w['alpha']} beta {w['beta']} gamma {w['gamma']}, {f['epochs']} epochs ({f['seconds_per_epoch']} s each)",
        "  val accuracy, part networks: " + "  ".join(f"{k} {v}" for k, v in parts.items())
        + f"  (the three together, mean softmax: {f.get('val_accuracy_parts_vote')})",
        f"  val accuracy, FilterNet: {f['filternet']['val_accuracy']}"]))


def print_localization(figures: dict[str, Any], run) -> None:
    typer.echo(f"localization: objects by {figures['object_method']}, parts {figures['part_method']}, "
               f"backbone {figures['backbone']} at {figures['image_size']} px")
    for key in ("object_iou50", "object_iou50_cam", "object_iou50_parts"):
        if key in figures:
            typer.echo(f"  {key:<20} " + "  ".join(f"{s} {v}" for s, v in figures[key].items()))
    if "part_center_hit" in figures:
        typer.echo(f"  part assignment (fitted on train): {figures['part_assignment']}")
        for split, hits in figures["part_center_hit"].items():
            typer.echo(f"  part_center_hit {split:<5} " + "  ".join(f"{k} {v}" for k, v in hits.items()))
    if figures.get("degenerate_maps"):
        typer.echo(f"  empty or flat maps (whole-image boxes): {figures['degenerate_maps']}")


@app.command()
@with_config(*ALL_SECTIONS)
def sweep(cfg: Config,
          space: str = typer.Option(..., "--space", help="What to sweep: 'train-parts' (alpha, "
                                    "beta, gamma), 'generate' (tau, per-class N) or 'fusion' (a, b, c)."),
          trials: int = typer.Option(8, "--trials", min=1, help="Trials (random search)."),
          scheduler: str = typer.Option("asha", "--scheduler",
                                        help="'asha' (stop weak training trials early) or 'fifo'."),
          concurrent: int = typer.Option(1, "--concurrent", min=1,
                                         help="Trials at once (each uses --workers workers).")) -> None:
    """Ray Tune sweep over a run's stage-1 loss weights, tau and N, or fusion weights; every
    objective is validation accuracy. Writes results.md/.csv and best.yaml under
    <run-dir>/sweeps/<space>/."""
    from ghns.sweep import METRIC, SPACES, run_sweep

    if space not in SPACES:
        raise typer.BadParameter(f"{space!r} is not one of {', '.join(SPACES)}", param_hint="--space")
    if scheduler not in ("asha", "fifo"):
        raise typer.BadParameter(f"{scheduler!r} is not 'asha' or 'fifo'", param_hint="--scheduler")
    result = run_sweep(cfg, space, trials, scheduler=scheduler, concurrent=concurrent)
    typer.echo((result.directory / "results.md").read_text())
    typer.echo(f"best: {result.best[METRIC[space]]} ({METRIC[space]}, validation); "
               f"config: {result.best_config}")


@app.command()
@with_config(*ALL_SECTIONS)
def study(cfg: Config,
          seeds: int = typer.Option(10, "--seeds", min=2, help="Seeds per arm."),
          tau_grid: Optional[str] = typer.Option(None, "--tau-grid", help="Also generate banks at "
                                                 "these tau values, e.g. '0.5,0.8'."),
          per_class_grid: Optional[str] = typer.Option(None, "--per-class-grid", help="And with these "
                                                       "negatives per class, e.g. '10,50,150,250' "
                                                       "(the paper's Fig. 4)."),
          out: Optional[str] = typer.Option(None, "--out", help="Study folder (default: "
                                            "<run-dir>/study)."),
          train_per_class: int = typer.Option(0, "--train-per-class", min=0, help="Train the parts "
                                              "classifiers on at most this many images per class "
                                              "(0 = all): the data-scarce setting."),
          part_networks_lr: float = typer.Option(0.0, "--part-networks-lr", min=0.0, help="Train each "
                                                 "arm's part networks too, at this learning rate (the "
                                                 "paper's stage 3), and add the arm generated_online "
                                                 "(n+ recomposed through the training networks); 0 = "
                                                 "frozen part networks."),
          force: bool = typer.Option(False, "--force", help="Start the study over.")) -> None:
    """Do the hard negatives help? The parts classifier without negatives, with generated ones and
    with mined ones over seeds (with --part-networks-lr its part networks train too, and n+
    recomposed through them is one more arm), alone and fused: top-1 and near-miss / open-set AUROC
    with paired 95% intervals (and McNemar); study.json / study.md / study.png."""
    from ghns.study import parse_grid, run_study

    result = run_study(cfg, seeds, parse_grid(tau_grid, float, "tau_grid"),
                       parse_grid(per_class_grid, int, "per_class_grid"), out=out, force=force,
                       train_per_class=train_per_class, part_networks_lr=part_networks_lr)
    folder = Path(out) if out else Path(cfg.run_dir) / "study"
    typer.echo((folder / "study.md").read_text().rstrip())
    typer.echo(f"(study: {folder / 'study.json'}, {folder / 'study.png'})")
    del result


@app.command()
def predict(images: list[str] = typer.Argument(..., help="Image files."),
            run_dir: str = typer.Option("ghns-run", "--run-dir", help="A finished run directory."),
            top: int = typer.Option(5, "--top", help="Classes to print per image."),
            reject: bool = typer.Option(False, "--reject", help="Answer 'none of these' for an image "
                                        "whose reject score is below the threshold that 95% of known "
                                        "val images reach (report.json: reject_threshold)."),
            reject_score: str = typer.Option("combined", "--reject-score", help="combined: the product of "
                                             "the known-val p-values of the top fused score and of the "
                                             "part-set similarity to the nearest train image; fused: the "
                                             "top fused score alone.")) -> None:
    """Top-5 class names with fused scores for each image (localize, three classifiers, fusion)."""
    from ghns.predict import Predictor, RejectRule
    from ghns.rundir import RunDir

    rule = RejectRule.of(RunDir(run_dir), reject_score) if reject else None
    predictor = Predictor(RunDir(run_dir))
    failed = 0
    for path in images:
        result = predictor(path, top=top, reject=rule)
        if result.error:
            failed += 1
            typer.echo(f"error: {result.error}", err=True)
            continue
        typer.echo(path)
        if rule is not None and result.rejected:
            typer.echo(f"  none of these ({rule.score} score {result.reject_score:.4f} < reject threshold "
                       f"{rule.threshold:.4f})")
        for name, score in result.top or []:
            typer.echo(f"  {score:.4f}  {name}")
    if failed:
        raise typer.Exit(1)


# -- pictures of a run (``ghns.figures``): name, drawing function, rows by default, help ----------

PICTURES = (
    ("parts", "parts_grid", 12, "Images in the grid.",
     "A PNG grid: images with object and part boxes, and the three part crops beside."),
    ("negatives", "negatives_mosaic", 8, "Hard negatives shown.",
     "A PNG mosaic: reference part crops beside a hard negative's, labelled by source class."),
)


def _picture_command(name: str, draw: str, rows_default: int, rows_help: str, summary: str) -> None:
    def command(cfg: Config, rows: int = typer.Option(rows_default, "--rows", help=rows_help),
                out: Optional[str] = typer.Option(None, "--out", help=f"PNG path (default: "
                                                  f"<run-dir>/figures/{name}.png).")) -> None:
        from ghns import figures
        from ghns.rundir import RunDir

        typer.echo(f"wrote {getattr(figures, draw)(RunDir(cfg.run_dir), rows=rows, out=out, seed=cfg.seed)}")

    command.__doc__, command.__name__ = summary, f"show_{name}"
    show_app.command(name)(with_config("run", shown=("run_dir", "seed", "quiet"))(command))


for _picture in PICTURES:
    _picture_command(*_picture)


# -- entry point -----------------------------------------------------------------------------

# Errors of the machine, not of ghns: a full disk, a read-only or foreign directory.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM, errno.EROFS}


# -- one command per stage (``ghns.stages``): run it and the stages before it, print its figures --

STAGE_HELP = ("Listed: the dataset's, this stage's and the run's settings. The earlier stages' settings "
              "are read too (this command runs them first where needed): 'ghns config --help' lists them all.")
PRINTERS: dict[str, Callable[[dict[str, Any], Any], None]] = {
    "localize": print_localization, "train-parts": print_train_parts, "generate": print_generate,
    "train-final": print_train_final, "evaluate": print_report}


def _stage_command(record: Stage) -> None:
    def command(cfg: Config, force: bool = FORCE) -> None:
        from ghns.pipeline import run_until
        from ghns.rundir import RunDir

        run_until(cfg, record.name, force=force)
        print_figures(RunDir(cfg.run_dir), record.name)

    command.__doc__ = f"{record.summary}\n\n{STAGE_HELP}"
    command.__name__ = record.name.replace("-", "_")
    app.command(record.name)(with_config(*ALL_SECTIONS, shown=("catalog", record.name, "run"))(command))


for _record in STAGES:
    if _record.cli:
        _stage_command(_record)


def os_error_line(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
    hint = ("free some space or use another --run-dir" if full else
            "check the permissions of the run directory and the dataset, or use another --run-dir")
    return f"{where}{exc.strerror or exc} ({hint})"


def _stop(message: str, code: int = 2) -> int:
    typer.echo(f"error: {message}", err=True)
    return code


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors with exit code 2 for user mistakes."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="ghns", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) inside a command comes back as n
            sys.exit(code)
    except GHNSError as exc:
        sys.exit(_stop(str(exc)))
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise  # anything else is a bug and keeps its traceback
        sys.exit(_stop(os_error_line(exc)))
    except click_exceptions.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else "")
        sys.exit(0)
    except click_exceptions.ClickException as exc:
        sys.exit(_stop(exc.format_message().strip().splitlines()[0]))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(_stop("aborted", code=130))
    finally:
        log.removeHandler(handler)
