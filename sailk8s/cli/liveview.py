"""The terminal view of `run` and `submit`: one live bar per stage, event lines once, a summary table."""

from __future__ import annotations

import os
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from sailk8s.cli.runtools import human_event, settings_from
from sailk8s.cli.status import headline
from sailk8s.ledger import StageResults
from sailk8s.store.base import ObjectStore

IMAGE_SUFFIXES = (".png", ".jpg", ".svg")


def quiet_structured_logs(ctx: click.Context) -> None:
    """On a terminal the view tells each event once: only errors remain as structlog lines, unless
    the user asked for a level (--log-level or $SAIL_LOG_LEVEL).

    The controller's info and warning lines (attempt submitted, retrying, stalled) each repeat an
    event the view already shows as a line or in a bar.
    """
    from sailk8s.logsetup import configure_logging

    root = ctx.find_root()
    if root.params.get("log_level") or os.environ.get("SAIL_LOG_LEVEL"):
        return
    configure_logging(root.params.get("log_format") or settings_from(ctx).log_format, "ERROR")


def _count(p: dict[str, Any]) -> str:
    done, total, unit = float(p.get("done") or 0), p.get("total"), p.get("unit") or "shards"
    return f"{done:g}/{float(total):g} {unit}" if total else f"{done:g} {unit}"


def _rate(p: dict[str, Any]) -> str:
    rate = p.get("rate")
    if not isinstance(rate, int | float) or not rate:
        return ""
    return f"{float(rate):.3g} {p.get('unit') or 'shards'}/s"


class LiveView:
    """Controller events on a terminal: a bar per stage (%, shards or tokens, rate, ETA, attempt,
    last failure) and each event's readable line once, above the bars."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description:<14}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            TextColumn("{task.fields[attempt]}"), TextColumn("[red]{task.fields[failure]}"),
            console=console, transient=False, refresh_per_second=4)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> LiveView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _task(self, stage: str) -> TaskID:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=None, count="", rate="", attempt="",
                                                       failure="")
        return self.tasks[stage]

    def __call__(self, event: dict[str, Any]) -> None:
        kind, stage = event.get("event", ""), event.get("stage")
        if stage and kind == "progress":
            p = event.get("progress") or {}
            total = p.get("total")
            self.progress.update(self._task(stage), completed=float(p.get("done") or 0),
                                 total=float(total) if total else None, count=_count(p), rate=_rate(p))
            return
        if stage and kind in ("attempt_submitted", "attempt_adopted"):
            self.progress.update(self._task(stage), attempt=f"attempt {event['attempt']}")
        elif stage and kind == "attempt_finished" and event.get("failure"):
            failure = f"#{event['attempt']} {event['failure']}: {event.get('message') or ''}"
            self.progress.update(self._task(stage), failure=failure[:60])
        elif stage and kind in ("stage_succeeded", "stage_skipped"):
            task = self._task(stage)
            total = self.progress.tasks[task].total or 1.0
            self.progress.update(task, total=total, completed=total, rate="")
        line = human_event(event)
        if line:
            self.progress.console.print(line, highlight=False, markup=False)


def summary_table(store: ObjectStore, run: str, stages: list[str], states: dict[str, Any]) -> Table:
    """The end of a run on a terminal: each stage's state, attempts, headline figures and pictures."""
    table = Table(title=f"run {run}", title_justify="left")
    for col in ("stage", "state", "attempts", "result", "pictures"):
        table.add_column(col, overflow="fold")
    for name in stages:
        st = states.get(name)
        results = StageResults(store, run, name)
        report = results.read_report()
        pictures = [store.describe(results.paths.artifact(a)) for a in results.artifacts()
                    if a.endswith(IMAGE_SUFFIXES)]
        summary = report.get("summary") if report else None
        table.add_row(name, st.state if st else "-", str(len(st.attempts)) if st else "0",
                      headline(report) or (summary if isinstance(summary, str) else "") or "",
                      "\n".join(pictures))
    return table
