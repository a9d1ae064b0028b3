"""What the dashboard shows of a run, gathered through the ledger's readers only (no file parsing here)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sailk8s.errors import StoreError
from sailk8s.ledger import ProgressRecord, StageResults
from sailk8s.ledger.runstate import (
    RunState,
    RunSummary,
    StageState,
    list_runs,
    load_state,
    summarize,
)
from sailk8s.store.base import ObjectStore


@dataclass
class StageView:
    """One stage of a run page: its state, attempts, live progress and reported figures."""

    name: str
    kind: str
    depends: list[str]
    state: StageState
    progress: ProgressRecord | None
    report: dict[str, Any] | None
    shards_done: int
    artifacts: list[str]

    @property
    def percent(self) -> float | None:
        """Progress in percent: the work counter when there is one, else shards over the reported total."""
        if self.progress is not None and self.progress.fraction is not None:
            return round(100.0 * self.progress.fraction, 1)
        total = (self.report or {}).get("shards")
        if isinstance(total, int) and total:
            return round(100.0 * min(self.shards_done, total) / total, 1)
        return 100.0 if self.state.state in ("succeeded", "skipped") else None

    @property
    def done_text(self) -> str:
        """'7/12 shards' or '1.2e+04/5e+04 tokens'; the shard count when no progress was written."""
        p = self.progress
        if p is None:
            return f"{self.shards_done} shards"
        return f"{p.done:g}/{p.total:g} {p.unit}"

    @property
    def log_attempts(self) -> list[int]:
        """Attempt numbers, newest first (their logs are listed in that order)."""
        return sorted((a.attempt for a in self.state.attempts), reverse=True)


@dataclass
class RunView:
    """A whole run page: the summary line and every stage, in the controller's order."""

    summary: RunSummary
    state: RunState
    stages: list[StageView] = field(default_factory=list)
    read_at: float = 0.0

    def stage(self, name: str) -> StageView | None:
        """The named stage's view, None if the run has none of that name."""
        return next((s for s in self.stages if s.name == name), None)


def run_summaries(store: ObjectStore) -> list[RunSummary]:
    """Every run with a readable state, newest first (an unreadable state is left out, not fatal)."""
    out = []
    for name in list_runs(store):
        try:
            state = load_state(store, name)
        except StoreError:
            continue
        if state is not None:
            out.append(summarize(state))
    return sorted(out, key=lambda s: s.started_at or 0.0, reverse=True)


def run_view(store: ObjectStore, run: str) -> RunView | None:
    """The run page's data, None when the store has no state for `run`."""
    state = load_state(store, run)
    if state is None:
        return None
    now = time.time()
    view = RunView(summary=summarize(state, now), state=state, read_at=now)
    for name, st in state.stages.items():
        results = StageResults(store, run, name)
        view.stages.append(StageView(
            name=name, kind=st.kind or "-", depends=list(st.depends), state=st,
            progress=results.read_progress(), report=results.read_report(),
            shards_done=len(results.shards.done()), artifacts=results.artifacts()))
    return view


def archived_logs(store: ObjectStore, run: str, stage: str, attempt: int) -> dict[int, str]:
    """Every archived rank log of one attempt, rank -> text (undecodable bytes replaced)."""
    results = StageResults(store, run, stage)
    out = {}
    for rank in results.archived_ranks(attempt):
        data = results.read_archived_log(attempt, rank)
        if data is not None:
            out[rank] = data.decode("utf-8", errors="replace")
    return out


def losses(report: dict[str, Any] | None) -> list[tuple[float, float]]:
    """A training report's (global step, loss) pairs; [] for other stages."""
    pairs = (report or {}).get("losses")
    if not isinstance(pairs, list):
        return []
    return [(float(p[0]), float(p[1])) for p in pairs
            if isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(v, int | float) for v in p)]


def funnel(report: dict[str, Any] | None) -> tuple[int, list[dict[str, Any]]] | None:
    """(samples in, funnel rows) of a filter report, None for other stages."""
    rows = (report or {}).get("funnel")
    samples_in = (report or {}).get("samples_in")
    if not isinstance(rows, list) or not isinstance(samples_in, int):
        return None
    return samples_in, [r for r in rows if isinstance(r, dict)]


def evaluations(report: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """Evaluation blocks of a report: the stage's own accuracy, then `<name>_eval` filter measurements."""
    rep = report or {}
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(rep.get("accuracy"), int | float):
        out.append(("accuracy", rep))
    out += [(k[:-5], v) for k, v in sorted(rep.items()) if k.endswith("_eval") and isinstance(v, dict)]
    return out
