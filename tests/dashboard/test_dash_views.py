"""What the run page shows, computed from ledger records (no server): percent, loss curves, the DAG."""

from __future__ import annotations

from pathlib import Path

from dash_support import trained_run

from sailk8s.dashboard import figures, views
from sailk8s.ledger import ProgressRecord, StageResults
from sailk8s.ledger.runstate import StageState
from sailk8s.store.local import LocalStore


def test_losses_are_split_per_substage() -> None:
    report = {"losses": [[1, 5.0], [2, 4.0], [3, 3.5], [4, 3.0]],
              "substages": [{"substage": "alignment", "steps": 1}, {"substage": "advance", "steps": 3}]}
    curve = views.losses(report)
    assert curve == {"x": [1.0, 2.0, 3.0, 4.0], "series": [
        {"label": "alignment", "values": [5.0, None, None, None]},
        {"label": "advance", "values": [None, 4.0, 3.5, 3.0]}]}
    assert views.losses({"kept": 3}) is None


def test_a_shard_stage_counts_done_markers_and_a_training_stage_its_tokens(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, durable=False)
    trained_run(store)
    view = views.run_view(store, "trained")
    assert view is not None
    (stage,) = view.stages
    assert stage.percent == 100.0 and views.losses(stage.report) is not None
    StageResults(store, "trained", "pretrain").write_progress(
        0, ProgressRecord(done=250, total=1000, unit="tokens", attempt=1))
    stage = views.run_view(store, "trained").stages[0]  # type: ignore[union-attr]
    assert (stage.percent, stage.done_text) == (25.0, "250/1000 tokens")


def test_dag_columns_follow_dependencies() -> None:
    stages = [StageState(name="a"), StageState(name="b", depends=["a"]), StageState(name="c", depends=["a"]),
              StageState(name="d", depends=["b", "c"], state="failed")]
    assert figures.depths(stages) == {"a": 0, "b": 1, "c": 1, "d": 2}
    svg = figures.dag_svg(stages)
    assert svg.count("<line ") == 4 and 'data-stage="d" data-state="failed"' in svg
