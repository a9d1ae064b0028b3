"""`outputs -f FILE [--release PREFIX]`: which run and stage own each output prefix of the store."""

from __future__ import annotations

import click

from sailk8s.cli.runtools import (
    FILE_OPTION,
    is_tty,
    json_line,
    open_pipeline_store,
    pipeline_for,
    settings_from,
)
from sailk8s.errors import ConfigError
from sailk8s.ledger.claims import read_claims, release_claim


@click.command()
@FILE_OPTION
@click.option("--release", "release", multiple=True, metavar="PREFIX",
              help="Drop the claim on this exact prefix, so another run or stage may write there "
                   "(its files stay; the next writer overwrites them). Repeatable.")
@click.pass_context
def outputs(ctx: click.Context, path: str, release: tuple[str, ...]) -> None:
    """List the output claims of the pipeline's store, or release some."""
    pipeline = pipeline_for(path)
    store = open_pipeline_store(pipeline, settings_from(ctx))
    if release:
        missing = []
        for prefix in release:
            claim = release_claim(store, prefix)
            if claim is None:
                missing.append(prefix)
            else:
                owner = f"stage {claim.stage!r} of run {claim.run!r}"
                click.echo(f"released {claim.prefix!r} (was written by {owner})")
        if missing:
            raise ConfigError(f"no claim on {', '.join(map(repr, missing))} in {store.describe()}")
        return
    claims = sorted(read_claims(store), key=lambda c: c.prefix)
    if not is_tty():
        for c in claims:
            json_line({"prefix": c.prefix, "run": c.run, "stage": c.stage})
        return
    if not claims:
        click.echo(f"no output claims in {store.describe()}")
    width = max((len(c.prefix) for c in claims), default=0)
    for c in claims:
        click.echo(f"{c.prefix:<{width}}  run {c.run}  stage {c.stage}")
