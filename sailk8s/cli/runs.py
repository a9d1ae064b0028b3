"""`runs [--store URI | -f FILE]`: every run in a store, like `kubectl get` (status, age, stages done)."""

from __future__ import annotations

import time

import click

from sailk8s.cli.runtools import is_tty, json_line, settings_from
from sailk8s.ledger.runstate import run_summaries
from sailk8s.store.base import ObjectStore

STORE_OPTION = click.option("--store", "store_uri", default=None, envvar="SAIL_STORE",
                            help="Store URI (file://, s3://); default: the store of -f's pipeline.")
FILE_OR_STORE_OPTION = click.option("-f", "--file", "path", default=None, type=click.Path(dir_okay=False),
                                    help="Pipeline YAML file whose store to read.")


def store_from_options(ctx: click.Context, store_uri: str | None, path: str | None) -> ObjectStore:
    """The store `--store` names, else the store of `-f`'s pipeline (UsageError with neither)."""
    from sailk8s.store import open_store

    settings = settings_from(ctx)
    if store_uri:
        return open_store(store_uri, settings)
    if path:
        from sailk8s.spec import load_pipeline

        return open_store(load_pipeline(path).store, settings)
    raise click.UsageError("give --store URI (or $SAIL_STORE) or -f PIPELINE")


def age(seconds: float | None) -> str:
    """kubectl's way of writing a duration: 45s, 12m, 3h, 2d."""
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= 2 * size or (unit == "m" and s >= size):
            return f"{s // size}{unit}"
    return f"{s}s"


@click.command()
@STORE_OPTION
@FILE_OR_STORE_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON line per run (default when piped).")
@click.pass_context
def runs(ctx: click.Context, store_uri: str | None, path: str | None, as_json: bool) -> None:
    """List the runs in a store: status, age, duration, stages done/total, failed stages."""
    store = store_from_options(ctx, store_uri, path)
    rows = run_summaries(store)
    if as_json or not is_tty():
        for r in rows:
            json_line(r.model_dump())
        return
    now = time.time()
    click.echo(f"{'RUN':<24} {'STATUS':<10} {'STAGES':<7} {'AGE':<5} {'DURATION':<9} FAILED")
    for r in rows:
        started = now - r.started_at if r.started_at else None
        click.echo(f"{r.run:<24} {r.status:<10} {f'{r.stages_done}/{r.stages_total}':<7} {age(started):<5} "
                   f"{age(r.duration_seconds):<9} {','.join(r.failed) or '-'}")

