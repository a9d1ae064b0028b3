"""`cancel RUN [STAGE] -f FILE`: stop a run's (or one stage's) attempts and any further retries."""

from __future__ import annotations

import click

from sailk8s.backends.base import AttemptRef
from sailk8s.cli.runtools import FILE_OPTION, backend_for, open_pipeline_store, pipeline_for, settings_from
from sailk8s.controller import default_holder
from sailk8s.ledger.runstate import CANCELLED, TERMINAL, load_state, request_cancel, save_state


@click.command()
@click.argument("run_name", metavar="RUN")
@click.argument("stage", required=False)
@FILE_OPTION
@click.pass_context
def cancel(ctx: click.Context, run_name: str, stage: str | None, path: str) -> None:
    """Cancel the run's running attempts (or one stage's); the controller starts no new ones."""
    settings = settings_from(ctx)
    pipeline = pipeline_for(path, run_name)
    names = [pipeline.stage(stage).name] if stage else [s.name for s in pipeline.stages]
    store = open_pipeline_store(pipeline, settings)
    # First the request, so a live controller does not retry what we are about to stop.
    request_cancel(store, pipeline.run, stage)
    backend = backend_for(pipeline, store, settings)
    state = load_state(store, pipeline.run)
    stopped = []
    if state is not None:
        for name in names:
            st = state.stages.get(name)
            if st is None or st.last is None or st.last.finished:
                continue
            backend.cancel(AttemptRef(pipeline.run, name, st.last.attempt, state.run_id or ""))
            stopped.append(st.last.name)
        lock = backend.run_lock(pipeline.run, default_holder())
        if lock.try_acquire():
            # No live controller: record the cancel in the run state ourselves.
            try:
                for name in names:
                    st = state.stages.get(name)
                    if st is not None and st.state not in TERMINAL:
                        st.state, st.cause, st.next_retry_at = CANCELLED, "cancelled by request", None
                        if st.last is not None and not st.last.finished:
                            st.last.phase = "Cancelled"
                if all(s.state in TERMINAL for s in state.stages.values()):
                    state.status = CANCELLED
                save_state(store, state)
            finally:
                lock.release()
    what = f"stage {stage!r} of run {pipeline.run!r}" if stage else f"run {pipeline.run!r}"
    click.echo(f"cancelled {what}: " + (", ".join(stopped) if stopped else "no attempt was running"))
