"""`ui [--store URI | -f FILE]`: serve the read-only dashboard of a store's runs (default 127.0.0.1:8765)."""

from __future__ import annotations

import click

from sailk8s.cli.runs import FILE_OR_STORE_OPTION, STORE_OPTION, store_from_options


@click.command()
@STORE_OPTION
@FILE_OR_STORE_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@click.pass_context
def ui(ctx: click.Context, store_uri: str | None, path: str | None, host: str, port: int) -> None:
    """Serve a read-only dashboard of the store's runs: DAG, attempts, progress, figures, samples, logs."""
    import uvicorn

    from sailk8s.dashboard.app import create_app

    store = store_from_options(ctx, store_uri, path)
    app = create_app(store)
    click.echo(f"dashboard of {store.describe()} on http://{host}:{port}/ (read only; Ctrl-C stops)",
               err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
