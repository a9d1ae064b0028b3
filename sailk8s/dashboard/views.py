"""What the dashboard shows of a run, gathered through the ledger's readers only (no file parsing here)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sailk8s.ledger import ProgressRecord, StageResults
from sailk8s.ledger.runstate import RunState, RunSummary, StageState, load_state, summarize
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
    def shards_total(self) -> int | None:
        """How many shards the stage has: from its progress record, else from its report."""
        if self.progress is not None and self.progress.unit == "shards" and self.progress.total:
            return int(self.progress.total)
        total = (self.report or {}).get("shards")
        return total if isinstance(total, int) and total else None

    @property
    def percent(self) -> float | None:
        """Percent done: shard stages count done markers (as `status` does), others their work counter."""
        p = self.progress
        if p is not None and p.unit != "shards" and p.fraction is not None:
            return round(100.0 * p.fraction, 1)
        total = self.shards_total
        if total:
            return round(100.0 * min(self.shards_done, total) / total, 1)
        return 100.0 if self.state.state in ("succeeded", "skipped") else None

    @property
    def done_text(self) -> str:
        """'7/12 shards' (done markers) or '1200/5000 tokens' (a training stage's counter)."""
        p = self.progress
        if p is not None and p.unit != "shards":
            return f"{p.done:g}/{p.total:g} {p.unit}"
        total = self.shards_total
        return f"{self.shards_done}/{total} shards" if total else f"{self.shards_done} shards"

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


def run_view(store: ObjectStore, run: str, *, artifacts: bool = True) -> RunView | None:
    """The run page's data, None when the store has no state for `run`; the live part, polled
    every few seconds, leaves the artifact listings out (one store listing less per stage)."""
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
            shards_done=len(results.shards.done()), artifacts=results.artifacts() if artifacts else []))
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


def losses(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """A training report's loss curve split per sub-stage, for uPlot: {"x": steps, "series":
    [{"label": sub-stage, "values": loss or None per step}]}; None for other stages."""
    pairs = (report or {}).get("losses")
    if not isinstance(pairs, list):
        return None
    points = [(float(p[0]), float(p[1])) for p in pairs
              if isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(v, int | float) for v in p)]
    if not points:
        return None
    # Sub-stage i owns the global steps after the steps of the sub-stages before it.
    bounds: list[tuple[str, float]] = []
    edge = 0.0
    for s in (report or {}).get("substages") or []:
        if isinstance(s, dict) and isinstance(s.get("steps"), int | float):
            edge += float(s["steps"])
            bounds.append((str(s.get("substage") or s.get("name") or f"part {len(bounds) + 1}"), edge))
    if not bounds:
        bounds = [("loss", float("inf"))]
    labels = [name for name, _ in bounds]

    def owner(step: float) -> int:
        return next((i for i, (_, end) in enumerate(bounds) if step <= end), len(bounds) - 1)

    series = [{"label": name, "values": [loss if owner(step) == i else None for step, loss in points]}
              for i, name in enumerate(labels)]
    return {"x": [step for step, _ in points], "series": series}


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
