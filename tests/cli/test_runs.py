"""`runs --store` lists a store's runs; `status --store URI RUN` shows a run without its pipeline file."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from sailk8s.cli import cli
from sailk8s.ledger import StageResults
from sailk8s.ledger.runstate import AttemptRecord, RunState, StageState, list_runs, save_state, summarize
from sailk8s.store.local import LocalStore


def _store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store", durable=False)
    a = StageState(name="a", kind="ingest", state="succeeded",
                   attempts=[AttemptRecord(attempt=1, name="old-a-1", phase="Succeeded", submitted_at=100.0,
                                           finished_at=110.0)])
    b = StageState(name="b", kind="filter", depends=["a"], state="failed", cause="exit code 1",
                   attempts=[AttemptRecord(attempt=1, name="old-b-1", phase="Failed", submitted_at=110.0,
                                           finished_at=120.0, failure="app", message="exit code 1")])
    save_state(store, RunState(run="old", status="failed", started_at=100.0, finished_at=130.0,
                               stages={"a": a, "b": b}))
    save_state(store, RunState(run="new", status="running", started_at=200.0,
                               stages={"x": StageState(name="x", kind="caption", state="running")}))
    StageResults(store, "old", "a").write_report(1, {"shards": 0, "kept": 3, "samples_in": 4})
    store.put("runs/old/a/done/ignored.json", b"{}")  # deeper keys are not runs
    return store


def test_list_runs_and_summaries(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert list_runs(store) == ["new", "old"]
    old = summarize(RunState.model_validate_json(store.get("runs/old/state.json")))
    assert (old.status, old.stages_done, old.stages_total, old.failed, old.duration_seconds) == \
        ("failed", 1, 2, ["b"], 30.0)


def test_runs_lists_newest_first_as_json_lines_when_piped(tmp_path: Path) -> None:
    _store(tmp_path)
    res = CliRunner().invoke(cli, ["runs", "--store", f"file://{tmp_path / 'store'}"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [r["run"] for r in rows] == ["new", "old"]
    assert rows[1]["failed"] == ["b"] and rows[1]["stages_done"] == 1


def test_runs_needs_a_store(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["runs"], env={"SAIL_STORE": ""})
    assert res.exit_code == 2 and "--store" in res.output


def test_status_from_the_store_without_a_pipeline_file(tmp_path: Path) -> None:
    _store(tmp_path)
    res = CliRunner().invoke(cli, ["status", "old", "--store", f"file://{tmp_path / 'store'}"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    rows = {r["stage"]: r for r in out["stages"]}
    assert out["status"] == "failed" and list(rows) == ["a", "b"]
    assert rows["a"]["kind"] == "ingest" and rows["a"]["result"] == "kept 3/4"
    assert rows["b"]["state"] == "failed" and rows["b"]["last_error"] == "exit code 1"


def test_status_of_an_unknown_run_names_the_runs_command(tmp_path: Path) -> None:
    _store(tmp_path)
    res = CliRunner().invoke(cli, ["status", "nope", "--store", f"file://{tmp_path / 'store'}"])
    assert res.exit_code != 0 and "sailk8s runs --store" in str(res.exception)


def test_an_unreadable_run_state_hides_no_other_run(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.put("runs/broken/state.json", b'{"run": "broken", "stages": 3}')
    res = CliRunner().invoke(cli, ["runs", "--store", f"file://{tmp_path / 'store'}"])
    assert res.exit_code == 0, res.output
    runs = [json.loads(line)["run"] for line in res.output.splitlines() if line.startswith("{")]
    assert runs == ["new", "old"]
