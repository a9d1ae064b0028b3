"""`run -f FILE [--only a,b] [--rerun c] [--rerun-changed] [--run R]`: stages in dependency order."""

from __future__ import annotations

import sys
from typing import Any

import click

from sailk8s.cli.liveview import LiveView, quiet_structured_logs, summary_table
from sailk8s.cli.runtools import (
    FILE_OPTION,
    backend_for,
    event_printer,
    exit_for,
    is_tty,
    kubectl_lines,
    open_pipeline_store,
    pipeline_for,
    settings_from,
)


@click.command()
@FILE_OPTION
@click.option("--only", default=None, help="Comma-separated stages to run (others are left alone).")
@click.option("--rerun", default=None,
              help="Comma-separated stages to redo: their results (outputs, done markers, checkpoints) "
                   "and those of every stage below them are deleted first.")
@click.option("--rerun-changed", is_flag=True,
              help="Redo (as --rerun) the stages whose definition changed since their results were "
                   "made, instead of stopping. Safe to repeat: a restarted controller resets nothing twice.")
@click.option("--run", "run_name", default=None, help="Run name (default: the file's `run`).")
@click.option("--lock-wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for another controller of this run to finish.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (order, skipped, refused or redone stages, attempt names) and write "
                   "nothing, to the store or any API.")
@click.option("-o", "--output", type=click.Choice(["table", "yaml"]), default="table", show_default=True,
              help="With --dry-run: `yaml` prints the job each stage to run would submit.")
@click.pass_context
def run(ctx: click.Context, path: str, only: str | None, rerun: str | None, rerun_changed: bool,
        run_name: str | None, lock_wait: float, dry_run: bool, output: str) -> None:
    """Run the pipeline's stages in dependency order, skipping those already complete."""
    from sailk8s.controller import Controller

    settings = settings_from(ctx)
    pipeline = pipeline_for(path, run_name)
    selected = _names(only) or None
    store = open_pipeline_store(pipeline, settings)
    if dry_run:
        from sailk8s.cli.dryrun import print_plan

        print_plan(pipeline, store, settings, selected, _names(rerun), rerun_changed, output)
        return
    backend = backend_for(pipeline, store, settings)
    tty = is_tty()
    for line in kubectl_lines(pipeline, settings):
        click.echo(f"# follow with: {line}", err=not tty)
    view = LiveView() if tty else None
    if view is not None:
        quiet_structured_logs(ctx)
    controller = Controller(pipeline, backend, store, lock_wait=lock_wait,
                            lease_seconds=settings.lease_seconds,
                            on_event=view if view is not None else event_printer(tty),
                            # A person watching local bars wants them to move: look every second.
                            tick=1.0 if view is not None and pipeline.backend == "local" else None)
    try:
        if view is not None:
            with view:
                state = controller.run(only=selected, rerun=_names(rerun), rerun_changed=rerun_changed)
        else:
            state = controller.run(only=selected, rerun=_names(rerun), rerun_changed=rerun_changed)
    except KeyboardInterrupt:
        click.echo(f"interrupted: running attempts keep going; `python -m sailk8s run -f {path}` adopts "
                   f"them, `python -m sailk8s cancel {pipeline.run} -f {path}` stops them", err=True)
        sys.exit(130)
    if view is not None:
        names = [s.name for s in pipeline.order() if not selected or s.name in selected]
        view.progress.console.print(summary_table(store, pipeline.run, names, state.stages))
    else:
        _print_summaries(pipeline, store, selected, tty)
    sys.exit(exit_for(state.status))


def _print_summaries(pipeline: Any, store: Any, selected: list[str] | None, tty: bool) -> None:
    """Each stage's one-line `summary` from its report.json (e.g. the held-out accuracy).

    On stderr when piped, so stdout stays JSON lines ending with run_finished.
    """
    from sailk8s.ledger import StageResults

    for stage in pipeline.order():
        if selected and stage.name not in selected:
            continue
        report = StageResults(store, pipeline.run, stage.name).read_report()
        if report and isinstance(report.get("summary"), str):
            click.echo(f"{stage.name}: {report['summary']}", err=not tty)


def _names(option: str | None) -> list[str]:
    """A comma-separated stage list."""
    return [s.strip() for s in option.split(",") if s.strip()] if option else []
