"""`submit STAGE -f FILE [--run R] [--attempt-from-scratch] [--detach]`: one stage, followed live."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from sailk8s.cli.liveview import LiveView, quiet_structured_logs, summary_table
from sailk8s.cli.runtools import (
    FILE_OPTION,
    backend_for,
    event_printer,
    is_tty,
    kubectl_lines,
    open_pipeline_store,
    pipeline_for,
    settings_from,
)


@click.command()
@click.argument("stage")
@FILE_OPTION
@click.option("--run", "run_name", default=None, help="Run name (default: the file's `run`).")
@click.option("--attempt-from-scratch", is_flag=True,
              help="Forget the stage's done shards, checkpoints and report; start anew.")
@click.option("--detach", is_flag=True, help="Submit and return at once (no retries, no follow).")
@click.option("--lock-wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for another controller of this run to finish.")
@click.pass_context
def submit(ctx: click.Context, stage: str, path: str, run_name: str | None, attempt_from_scratch: bool,
           detach: bool, lock_wait: float) -> None:
    """Submit one stage (its dependencies are not run) and follow it with retries."""
    from sailk8s.controller import Controller

    settings = settings_from(ctx)
    pipeline = pipeline_for(path, run_name)
    pipeline.stage(stage)  # ConfigError naming the stages when unknown
    store = open_pipeline_store(pipeline, settings)
    backend = backend_for(pipeline, store, settings)
    tty = is_tty()
    for line in kubectl_lines(pipeline, settings, stage):
        click.echo(f"# follow with: {line}", err=not tty)
    view = LiveView() if tty and not detach else None
    if view is not None:
        quiet_structured_logs(ctx)
    on_event: Callable[[dict[str, Any]], None] = view if view is not None else event_printer(tty)
    # A person watching a local bar wants it to move: look every second (two file reads).
    tick = 1.0 if view is not None and pipeline.backend == "local" else None
    controller = Controller(pipeline, backend, store, lock_wait=lock_wait,
                            lease_seconds=settings.lease_seconds,
                            on_event=on_event, tick=tick)
    try:
        if view is not None:
            with view:
                state = controller.submit(stage, from_scratch=attempt_from_scratch)
        else:
            state = controller.submit(stage, from_scratch=attempt_from_scratch, detach=detach)
    except KeyboardInterrupt:
        click.echo(f"interrupted: the attempt keeps running; `python -m sailk8s submit {stage} -f {path}` "
                   "follows it again", err=True)
        sys.exit(130)
    st = state.stages[stage]
    if detach:
        last = st.last
        if tty:
            click.echo(f"{stage}: {st.state}" + (f", attempt {last.attempt} ({last.name})" if last else "")
                       + f"; watch with: python -m sailk8s status {pipeline.run} -f {path}")
        sys.exit(0 if st.state != "failed" else 1)
    if view is not None:
        view.progress.console.print(summary_table(store, pipeline.run, [stage], state.stages))
    sys.exit(0 if st.state in ("succeeded", "skipped") else 1)
