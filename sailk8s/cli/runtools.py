"""Shared pieces of the run/submit/status/logs/cancel commands: pipeline, store, backend, output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from sailk8s.backends.base import Backend
from sailk8s.errors import ConfigError
from sailk8s.settings import Settings, load_settings
from sailk8s.spec import Pipeline, format_validation_error, load_pipeline
from sailk8s.store.base import ObjectStore

FILE_OPTION = click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False),
                           help="Pipeline YAML file.")


def settings_from(ctx: click.Context | None) -> Settings:
    """The settings the CLI group loaded (or fresh ones)."""
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, Settings) else load_settings()


def pipeline_for(path: str, run: str | None = None) -> Pipeline:
    """Load the pipeline file; `run` overrides its run name (validated like the file's)."""
    pipeline = load_pipeline(path)
    if run and run != pipeline.run:
        from pydantic import ValidationError

        try:
            pipeline = Pipeline.model_validate({**pipeline.model_dump(), "run": run})
        except ValidationError as err:
            raise ConfigError("--run: " + "; ".join(format_validation_error(err))) from None
    return pipeline


def open_pipeline_store(pipeline: Pipeline, settings: Settings) -> ObjectStore:
    """The pipeline's store (StoreUnavailable/ConfigError name the cause)."""
    from sailk8s.store import open_store

    return open_store(pipeline.store, settings)


def backend_for(pipeline: Pipeline, store: ObjectStore, settings: Settings) -> Backend:
    """The backend pipeline.backend names; the Kubernetes client is imported only when used."""
    if pipeline.backend == "kubernetes":
        from sailk8s.backends.kubernetes.backend import KubernetesBackend

        return KubernetesBackend.for_pipeline(pipeline, settings, store=store)
    from sailk8s.backends.local.backend import LocalBackend

    return LocalBackend(store)


def kubectl_lines(pipeline: Pipeline, settings: Settings, stage: str | None = None) -> list[str]:
    """The equivalent kubectl commands for a Kubernetes run (none for the local backend)."""
    if pipeline.backend != "kubernetes":
        return []
    from sailk8s.backends.kubernetes.manifest import kubectl_commands

    stages = [stage] if stage else [s.name for s in pipeline.stages]
    ns = pipeline.namespace or settings.namespace
    return kubectl_commands(ns, pipeline.run, stages, job_api=pipeline.kubernetes.job_api)


def is_tty() -> bool:
    """Whether stdout is a terminal (tables and bars) rather than a pipe (JSON lines)."""
    return sys.stdout.isatty()


def json_line(obj: dict[str, Any]) -> None:
    """One JSON object on one stdout line, flushed (for pipes and log shippers)."""
    click.echo(json.dumps(obj, default=str, sort_keys=True))
    sys.stdout.flush()


def human_event(event: dict[str, Any]) -> str | None:
    """A readable line for a controller event, or None for events not worth a line."""
    kind = event.get("event", "")
    stage = event.get("stage", "")
    if kind == "attempt_submitted":
        return f"{stage}: attempt {event['attempt']} submitted ({event['name']})"
    if kind == "attempt_adopted":
        return f"{stage}: adopted running attempt {event['attempt']} ({event['name']})"
    if kind == "attempt_finished":
        return f"{stage}: attempt {event['attempt']} {event['phase'].lower()}" + (
            f" [{event['failure']}]: {event['message']}" if event.get("failure") else "")
    if kind == "stage_retrying":
        return f"{stage}: retrying in {event['delay']:g}s ({event['cause']})"
    if kind == "stage_stalled":
        return f"{stage}: STALLED, no progress for {event['seconds']:.0f}s"
    if kind == "stage_skipped":
        return f"{stage}: already complete, skipped"
    if kind in ("stage_succeeded", "stage_failed", "stage_cancelled", "stage_blocked"):
        cause = event.get("cause")
        return f"{stage}: {kind.removeprefix('stage_')}" + (f" ({cause})" if cause else "")
    if kind == "run_finished":
        return f"run {event['run']}: {event['status']}"
    return None


def event_printer(tty: bool) -> Callable[[dict[str, Any]], None]:
    """Controller events as readable lines on a terminal, JSON lines when piped."""
    def emit(event: dict[str, Any]) -> None:
        if not tty:
            json_line(event)
            return
        line = human_event(event)
        if line:
            click.echo(line)
    return emit


def exit_for(status: str) -> int:
    """Process exit status for a run's final status word."""
    return 0 if status == "succeeded" else 1
