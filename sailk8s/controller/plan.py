"""What `run` would do, read from the store and the pipeline file without writing anything."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sailk8s.backends.base import attempt_name
from sailk8s.ledger.results import StageResults
from sailk8s.ledger.runstate import DONE, RunState, changed_definitions, load_state
from sailk8s.spec import Pipeline
from sailk8s.store.base import ObjectStore

SKIP, RUN, RERUN, REFUSED, RESUME = "skip", "run", "rerun", "refused", "resume"


@dataclass(frozen=True)
class StagePlan:
    """One stage's fate in the planned run."""

    stage: str
    action: str  # skip | run | resume | rerun | refused
    attempt: int  # the attempt that would be submitted (or adopted); 0 when none
    name: str  # its job name, '' when none
    reason: str


def plan_run(pipeline: Pipeline, store: ObjectStore, only: Sequence[str] | None = None,
             rerun: Sequence[str] = (), rerun_changed: bool = False) -> list[StagePlan]:
    """Each selected stage in run order: skipped (complete), run, resumed, redone or refused.

    Mirrors Controller.run's decisions with reads only (state.json, reports, done markers).
    """
    state = load_state(store, pipeline.run) or RunState(run=pipeline.run)
    fingerprints = pipeline.fingerprints()
    order = pipeline.order()
    selected = [s for s in order if not only or s.name in set(only)]
    names = [s.name for s in selected]
    changed = changed_definitions(state, fingerprints, names)
    redo = set(pipeline.downstream([*rerun, *(changed if rerun_changed else [])]))
    refused = set() if rerun_changed else {n for n in changed if n not in redo}
    out = []
    for stage in selected:
        st = state.stages.get(stage.name)
        last = st.last if st is not None else None
        next_attempt = (last.attempt if last else 0) + 1
        if stage.name in refused:
            out.append(StagePlan(stage.name, REFUSED, 0, "", "its definition changed since its results were "
                                 f"made: add --rerun {stage.name} or --rerun-changed"))
        elif stage.name in redo:
            why = "changed definition" if stage.name in changed else "asked (--rerun) or below a redone stage"
            out.append(StagePlan(stage.name, RERUN, next_attempt, attempt_name(pipeline.run, stage.name,
                                 next_attempt), f"results deleted first: {why}"))
        elif (st is not None and st.state in DONE) or (
                not (st and st.attempts) and StageResults(store, pipeline.run, stage.name).complete()):
            out.append(StagePlan(stage.name, SKIP, 0, "", "complete"))
        elif last is not None and not last.finished:
            out.append(StagePlan(stage.name, RESUME, last.attempt, last.name,
                                 "an unfinished attempt: adopted if still running, else submitted again"))
        else:
            done = len(StageResults(store, pipeline.run, stage.name).shards.done())
            why = f"{done} shard(s) already done are skipped" if done else "nothing done yet"
            out.append(StagePlan(stage.name, RUN, next_attempt,
                                 attempt_name(pipeline.run, stage.name, next_attempt), why))
    return out
