"""`logs RUN STAGE -p FILE [-f] [--rank N] [--attempt K]`: live or archived logs (-f follows, as kubectl)."""

from __future__ import annotations

import click

from sailk8s.backends.base import AttemptRef
from sailk8s.cli.runtools import backend_for, open_pipeline_store, pipeline_for, settings_from
from sailk8s.errors import ConfigError
from sailk8s.ledger.runstate import load_state


@click.command()
@click.argument("run_name", metavar="RUN")
@click.argument("stage")
@click.option("-p", "--pipeline", "--file", "path", required=True, envvar="SAIL_PIPELINE",
              type=click.Path(dir_okay=False),
              help="Pipeline YAML file (names the store and backend); default $SAIL_PIPELINE.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the attempt ends.")
@click.option("--rank", type=int, default=None, help="Only this rank (default: all, rank 0 first).")
@click.option("--attempt", type=int, default=None, help="Attempt number (default: the latest).")
@click.pass_context
def logs(ctx: click.Context, run_name: str, stage: str, path: str, follow: bool, rank: int | None,
         attempt: int | None) -> None:
    """Print a stage attempt's logs: live from the backend, archived from the store afterwards."""
    settings = settings_from(ctx)
    pipeline = pipeline_for(path, run_name)
    pipeline.stage(stage)
    store = open_pipeline_store(pipeline, settings)
    state = load_state(store, pipeline.run)
    if attempt is None:
        last = state.stages[stage].last if state and stage in state.stages else None
        if last is None:
            raise ConfigError(f"run {pipeline.run!r} has no attempt of stage {stage!r} yet "
                              f"(start it with: python -m sailk8s submit {stage} -f {path})")
        attempt = last.attempt
    backend = backend_for(pipeline, store, settings)
    run_id = state.run_id or "" if state else ""
    for line in backend.logs(AttemptRef(pipeline.run, stage, attempt, run_id), follow=follow, rank=rank):
        click.echo(line)
