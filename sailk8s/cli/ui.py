"""`ui [--store URI | -f FILE]`: serve the read-only dashboard of a store's runs (default 127.0.0.1:8765)."""

from __future__ import annotations

import click

from sailk8s.backends.base import AttemptRef, Backend
from sailk8s.cli.runs import FILE_OR_STORE_OPTION, STORE_OPTION, store_from_options
from sailk8s.cli.runtools import backend_for, settings_from
from sailk8s.dashboard.app import LiveLogs
from sailk8s.errors import SailError
from sailk8s.settings import Settings
from sailk8s.store.base import ObjectStore


def live_logs_from(store: ObjectStore, path: str | None, settings: Settings) -> LiveLogs:
    """Reads a running attempt's log from its backend: the pipeline file's (-f), or the local one
    (it needs only the store); None for any other backend, which then shows archived logs only."""
    backends: dict[str, Backend | None] = {}

    def backend(name: str) -> Backend | None:
        if name not in backends:
            found: Backend | None = None
            try:
                if path is not None:
                    from sailk8s.spec import load_pipeline

                    pipeline = load_pipeline(path)
                    if pipeline.backend == name:
                        found = backend_for(pipeline, store, settings)
                if found is None and name == "local":
                    from sailk8s.backends.local.backend import LocalBackend

                    found = LocalBackend(store)
            except SailError:
                found = None  # e.g. no cluster access from here: archived logs only
            backends[name] = found
        return backends[name]

    def logs(run: str, stage: str, attempt: int, run_id: str, backend_name: str) -> list[str] | None:
        b = backend(backend_name)
        if b is None:
            return None
        try:
            return list(b.logs(AttemptRef(run, stage, attempt, run_id), follow=False))
        except SailError:
            return None

    return logs


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
    app = create_app(store, live_logs=live_logs_from(store, path, settings_from(ctx)))
    click.echo(f"dashboard of {store.describe()} on http://{host}:{port}/ (read only; Ctrl-C stops)",
               err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
