"""`status [RUN] -f FILE`: per stage state, attempts, shards done/total, %, ETA, last error."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from sailk8s.backends.base import AttemptRef, Backend, Phase
from sailk8s.cli.runtools import (
    backend_for,
    is_tty,
    json_line,
    open_pipeline_store,
    pipeline_for,
    settings_from,
)
from sailk8s.errors import ObjectNotFound, SailError
from sailk8s.ledger import StageResults
from sailk8s.ledger.runstate import RunState, changed_definitions, load_state
from sailk8s.settings import Settings
from sailk8s.spec import Pipeline
from sailk8s.store.base import ObjectStore


def _json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads(store.get(key))
    except (ObjectNotFound, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def headline(report: dict[str, Any] | None) -> str | None:
    """A stage's headline figures from its report: caption quality, kept/in, accuracy, loss."""
    if not report:
        return None
    parts: list[str] = []
    q = report.get("caption_quality")
    if isinstance(q, dict) and q.get("captions"):
        parts.append(f"{q['distinct']} distinct captions / {q['input_distinct']} images, "
                     f"top {q['top_share']:.0%}, {q['truncated_share']:.0%} cut, "
                     f"{q['alt_copy_share']:.0%} copy alt-text")
    if isinstance(report.get("kept"), int) and isinstance(report.get("samples_in"), int):
        parts.append(f"kept {report['kept']}/{report['samples_in']}")
    for name in sorted(k for k in report if k.endswith("_eval") and isinstance(report[k], dict)):
        ev = report[name]
        parts.append(f"{name[:-5]} P {ev.get('precision')} R {ev.get('recall')} on {ev.get('pairs')} pairs")
    if isinstance(report.get("accuracy"), int | float):
        parts.append(f"accuracy {report['accuracy']:.3f}")
    if isinstance(report.get("final_loss"), int | float):
        parts.append(f"final loss {report['final_loss']:.4f}")
    return "; ".join(parts) or None


def stage_rows(pipeline: Pipeline, store: ObjectStore, state: RunState | None,
               backend: Backend | None) -> list[dict[str, Any]]:
    """One row per stage from state.json, the ledger (one listing per stage) and progress.json."""
    names = [s.name for s in pipeline.order()]
    # Stages whose results came from another definition than the file's: `run` would stop.
    changed = set(changed_definitions(state, pipeline.fingerprints(), names)) if state else set()
    stages = [(s.name, s.kind) for s in pipeline.order()]
    return rows_for(stages, pipeline.run, store, state, backend, changed)


def rows_for(stages: list[tuple[str, str]], run: str, store: ObjectStore, state: RunState | None,
             backend: Backend | None, changed: frozenset[str] | set[str] = frozenset(),
             ) -> list[dict[str, Any]]:
    """`stage_rows` for (name, kind) pairs: also what `status --store` shows without a pipeline file."""
    rows = []
    for name, kind in stages:
        st = state.stages.get(name) if state else None
        results = StageResults(store, run, name)
        record = results.read_progress()
        progress = record.model_dump() if record is not None else {}
        report = results.read_report()
        done = len(results.shards.done())
        total = progress.get("total") if progress.get("unit", "shards") == "shards" else None
        if total is None and report and isinstance(report.get("shards"), int):
            total = report["shards"]
        word = st.state if st else ("complete" if report else "pending")
        last = st.last if st else None
        phase = last.phase if last else None
        if last is not None and not last.finished and backend is not None:
            try:  # one cheap look: the attempt may have ended while nobody was watching
                ref = AttemptRef(run, name, last.attempt, state.run_id or "" if state else "")
                phase = backend.status(ref).phase.value
            except SailError as err:
                phase = f"unknown ({err})"
        error = st.cause if st and st.cause else None
        if error is None and last is not None and last.phase == Phase.FAILED.value:
            error = last.message
        pct = round(100.0 * done / total, 1) if isinstance(total, int | float) and total else None
        unit = progress.get("unit", "shards")
        work = None
        if unit != "shards" and isinstance(progress.get("total"), int | float) and progress["total"]:
            # Training stages count tokens or steps, not shards: show that instead.
            p_done, p_total = float(progress.get("done") or 0), float(progress["total"])
            work = f"{p_done:g}/{p_total:g} {unit}"
            pct = round(100.0 * min(p_done, p_total) / p_total, 1)
        eta = progress.get("eta_seconds") if word in ("running", "retrying") else None
        rows.append({
            "stage": name, "kind": kind, "state": word, "stalled": bool(st and st.stalled),
            "attempts": len(st.attempts) if st else 0, "attempt": last.name if last else None,
            "phase": phase, "shards_done": done, "shards_total": total, "percent": pct,
            "eta_seconds": eta, "last_error": error, "work": work,
            "definition_changed": name in changed, "result": headline(report),
        })
    return rows


def _eta(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _table(run: str, state: RunState | None, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    head = f"run {run}: " + (f"{state.status} (controller {state.controller or '-'}, updated "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state.updated_at or 0))})"
                             if state else "no run state yet")
    table = Table(title=head, title_justify="left")
    for col in ("stage", "state", "attempts", "done", "%", "ETA", "result", "last error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        shards = r["work"] or (f"{r['shards_done']}/{r['shards_total']} shards" if r["shards_total"]
                               else str(r["shards_done"]))
        state_word = r["state"] + (" STALLED" if r["stalled"] else "")
        if r["definition_changed"]:
            state_word += " (definition changed: --rerun)"
        if r["phase"] and r["state"] in ("running", "retrying"):
            state_word += f" ({r['phase']})"
        table.add_row(r["stage"], state_word, str(r["attempts"]), shards,
                      "-" if r["percent"] is None else f"{r['percent']:g}", _eta(r["eta_seconds"]),
                      r["result"] or "", r["last_error"] or "")
    Console().print(table)


@click.command()
@click.argument("run_name", required=False, metavar="[RUN]")
@click.option("-f", "--file", "path", default=None, type=click.Path(dir_okay=False),
              help="Pipeline YAML file (or --store and RUN).")
@click.option("--store", "store_uri", default=None, envvar="SAIL_STORE",
              help="Store URI (file://, s3://): show RUN from its run state, without a pipeline file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (default when piped).")
@click.pass_context
def status(ctx: click.Context, run_name: str | None, path: str | None, store_uri: str | None,
           as_json: bool) -> None:
    """Show a run: per stage state, attempts, shards done/total, %, ETA and last error."""
    settings = settings_from(ctx)
    if path is None:
        if not store_uri or not run_name:
            raise click.UsageError("give -f PIPELINE, or --store URI and RUN")
        _status_from_store(store_uri, run_name, settings, as_json)
        return
    pipeline = pipeline_for(path, run_name)
    store = open_pipeline_store(pipeline, settings)
    state = load_state(store, pipeline.run)
    backend = None
    if state is not None and any(s.last and not s.last.finished for s in state.stages.values()):
        try:
            backend = backend_for(pipeline, store, settings)
        except SailError:
            backend = None  # e.g. no cluster access: show what the store knows
    rows = stage_rows(pipeline, store, state, backend)
    _show(pipeline.run, state, rows, as_json)


def _status_from_store(uri: str, run: str, settings: Settings, as_json: bool) -> None:
    """The run as its state.json and ledger tell it: stages in the order the controller met them."""
    from sailk8s.ledger.paths import segment
    from sailk8s.store import open_store

    store = open_store(uri, settings)
    state = load_state(store, segment(run, "run name"))
    if state is None:
        raise SailError(f"no run {run!r} in {store.describe()} (see `python -m sailk8s runs --store {uri}`)")
    rows = rows_for([(name, st.kind or "-") for name, st in state.stages.items()], run, store, state, None)
    _show(run, state, rows, as_json)


def _show(run: str, state: RunState | None, rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json or not is_tty():
        json_line({"run": run, "status": state.status if state else None,
                   "controller": state.controller if state else None, "stages": rows})
        return
    _table(run, state, rows)
