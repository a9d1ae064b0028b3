"""`validate -f FILE`: exit 0, or one line per problem naming its field path."""

from __future__ import annotations

import click

from sailk8s.spec import load_pipeline


@click.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False),
              help="Pipeline YAML file.")
@click.option("--show", is_flag=True, help="Also print the stages in run order.")
def validate(path: str, show: bool) -> None:
    """Check a pipeline file and list every problem, one per line."""
    pipeline = load_pipeline(path)  # ConfigError -> one line per problem, exit 3
    click.echo(f"{path}: ok (run {pipeline.run!r}, backend {pipeline.backend}, "
               f"{len(pipeline.stages)} stages, store {pipeline.store})")
    if show:
        for stage in pipeline.order():
            r = stage.resources
            deps = ", ".join(stage.depends) or "-"
            click.echo(f"  {stage.name:<16} {stage.kind:<9} after: {deps:<24} "
                       f"{r.nodes} node(s) x {r.nproc_per_node} proc(s), {r.gpus_per_node} GPU/node")
