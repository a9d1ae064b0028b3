"""A changed stage definition is never mixed with old results; outputs have one owner; --rerun redoes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ctl_fakes import FakeBackend, FakeTime, make_pipeline

from sailk8s.controller import Controller
from sailk8s.errors import ConfigError
from sailk8s.ledger import StageResults
from sailk8s.ledger.claims import OutputsClaimed, read_claims
from sailk8s.ledger.runstate import AttemptRecord, RunState, StageState, load_state, save_state
from sailk8s.store.local import LocalStore


def chain(min_words: int = 3, cpu: str = "1") -> list[dict[str, Any]]:
    """a -> b, and c on its own; each writes one output prefix."""
    cfg = {"filters": [{"type": "caption", "min_words": min_words}]}
    return [
        {"name": "a", "outputs": ["data/a"], "config": cfg, "resources": {"cpu": cpu}},
        {"name": "b", "depends": ["a"], "inputs": ["data/a"], "outputs": ["data/b"]},
        {"name": "c", "outputs": ["data/c"]},
    ]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", durable=False)


def controller(
    store: LocalStore, stages: list[dict[str, Any]], run: str = "r1"
) -> tuple[FakeBackend, Controller]:
    ft = FakeTime()
    pipeline = make_pipeline(str(store.root), stages, run=run)
    backend = FakeBackend(store=store, time=ft, script={})
    return backend, Controller(pipeline, backend, store, clock=ft.clock, sleep=ft.sleep, tick=5.0)


def write_outputs(store: LocalStore, *prefixes: str) -> None:
    for p in prefixes:
        store.put(f"{p}/shard-000000.tar", b"old")
        store.put(f"{p}/shard-000001.tar", b"old")


def test_fingerprints_follow_what_decides_outputs() -> None:
    base = make_pipeline("/s", chain()).fingerprints()
    assert make_pipeline("/s", chain()).fingerprints() == base  # deterministic
    assert make_pipeline("/s", chain(cpu="4")).fingerprints() == base  # resources: not an output change
    changed = make_pipeline("/s", chain(min_words=5)).fingerprints()
    assert changed["a"] != base["a"] and changed["b"] != base["b"]  # b inherits a's change
    assert changed["c"] == base["c"]
    implicit_default = chain()
    implicit_default[0]["config"] = {"filters": [{"type": "caption"}]}  # min_words 3 by default
    assert make_pipeline("/s", implicit_default).fingerprints() == base
    assert make_pipeline("/s", chain()).downstream(["a"]) == ["a", "b"]


def test_a_release_adding_a_defaulted_field_keeps_fingerprints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upgrading must not make every finished run look changed: a new field whose default keeps
    the old behaviour leaves the fingerprint alone; setting it to another value changes it."""
    from pydantic import create_model

    from sailk8s.stageconfig import filter as filter_config
    from sailk8s.stageconfig import registry

    base = make_pipeline("/s", chain()).fingerprints()
    newer = create_model("Config", __base__=filter_config.Config, new_option=(str, "old-behaviour"))
    monkeypatch.setitem(registry.KINDS, "filter", registry.StageKind("filter", newer, "filter"))
    assert make_pipeline("/s", chain()).fingerprints() == base
    other = chain()
    other[0]["config"] = {**other[0]["config"], "new_option": "new-behaviour"}
    assert make_pipeline("/s", other).fingerprints()["a"] != base["a"]


def test_a_changed_config_is_refused_before_anything_runs(store: LocalStore) -> None:
    _, ctl = controller(store, chain())
    assert ctl.run().status == "succeeded"
    write_outputs(store, "data/a", "data/b")
    backend2, ctl2 = controller(store, chain(min_words=5))
    with pytest.raises(ConfigError) as err:
        ctl2.run()
    msg = str(err.value)
    assert "'a', 'b'" in msg and "--rerun a,b" in msg and "'c'" not in msg
    assert backend2.submits == []
    assert store.get("data/a/shard-000000.tar") == b"old"  # nothing lost
    state = load_state(store, "r1")
    assert state is not None and state.stages["a"].state == "succeeded"


def test_same_definition_skips_and_resources_may_change(store: LocalStore) -> None:
    _, ctl = controller(store, chain())
    ctl.run()
    backend2, ctl2 = controller(store, chain(cpu="8"))
    assert ctl2.run().status == "succeeded"
    assert backend2.submits == []


def test_rerun_redoes_the_stage_and_everything_below_it(store: LocalStore) -> None:
    _, ctl = controller(store, chain())
    ctl.run()
    write_outputs(store, "data/a", "data/b", "data/c")
    store.put("runs/r1/a/report.json", b"{}")
    backend2, ctl2 = controller(store, chain(min_words=5))
    state = ctl2.run(rerun=["a"])
    assert state.status == "succeeded"
    assert backend2.submits == [("a", 2), ("b", 2)]  # numbering continues: no job name reused
    assert list(store.list("data/a/")) == [] and list(store.list("data/b/")) == []  # no stale shard
    assert store.get("data/c/shard-000000.tar") == b"old"  # c was not below a
    assert StageResults(store, "r1", "a").read_report() == {"shards": 0, "attempt": 2}  # the rerun's
    fps = make_pipeline(str(store.root), chain(min_words=5)).fingerprints()
    saved = load_state(store, "r1")
    assert saved is not None and saved.stages["a"].fingerprint == fps["a"]
    # The next run with this definition skips everything.
    backend3, ctl3 = controller(store, chain(min_words=5))
    assert ctl3.run().status == "succeeded" and backend3.submits == []


def test_rerun_changed_resets_once_and_only_what_changed(store: LocalStore) -> None:
    _, ctl = controller(store, chain())
    ctl.run()
    write_outputs(store, "data/a", "data/c")
    backend2, ctl2 = controller(store, chain(min_words=5))
    assert ctl2.run(rerun_changed=True).status == "succeeded"
    assert backend2.submits == [("a", 2), ("b", 2)]
    assert list(store.list("data/a/")) == [] and store.get("data/c/shard-000000.tar") == b"old"
    write_outputs(store, "data/a")
    # A restarted controller with the same flag finds nothing changed: it resets nothing again.
    backend3, ctl3 = controller(store, chain(min_words=5))
    assert ctl3.run(rerun_changed=True).status == "succeeded" and backend3.submits == []
    assert store.get("data/a/shard-000000.tar") == b"old"


def test_rerun_names_unknown_stages(store: LocalStore) -> None:
    _, ctl = controller(store, chain())
    with pytest.raises(ConfigError, match="--rerun: no stage named 'zz'"):
        ctl.run(rerun=["zz"])


def test_a_state_from_before_fingerprints_is_adopted(store: LocalStore) -> None:
    _, ctl = controller(store, chain())
    ctl.run()
    state = load_state(store, "r1")
    assert state is not None
    for st in state.stages.values():
        st.fingerprint = None
    save_state(store, state)
    backend2, ctl2 = controller(store, chain(min_words=5))
    assert ctl2.run().status == "succeeded" and backend2.submits == []  # nothing to compare with


def test_another_run_cannot_overwrite_a_runs_outputs(store: LocalStore) -> None:
    _, ctl = controller(store, chain())
    ctl.run()
    write_outputs(store, "data/a")
    backend2, ctl2 = controller(store, chain(), run="r2")
    with pytest.raises(OutputsClaimed) as err:
        ctl2.run()
    msg = str(err.value)
    assert "stage 'a' of run 'r2'" in msg and "written by stage 'a' of run 'r1'" in msg
    assert "python -m sailk8s outputs -f FILE --release PREFIX" in msg
    assert backend2.submits == []
    assert store.get("data/a/shard-000000.tar") == b"old"


def test_nested_outputs_of_two_stages_are_refused(store: LocalStore) -> None:
    stages = [{"name": "a", "outputs": ["data/x"]}, {"name": "b", "outputs": ["data/x/y"]}]
    backend, ctl = controller(store, stages)
    claimed = "'data/x/y' overlaps 'data/x', written by stage 'a' of run 'r1'"
    with pytest.raises(OutputsClaimed, match=claimed):
        ctl.run()
    assert backend.submits == []
    # A sibling with a common name start is not nested.
    _, ok = controller(store, [{"name": "a", "outputs": ["data/x"]}, {"name": "b", "outputs": ["data/xy"]}])
    assert ok.run().status == "succeeded"
    assert {(c.prefix, c.stage) for c in read_claims(store)} == {("data/x", "a"), ("data/xy", "b")}


def test_submit_checks_the_definition_too(store: LocalStore) -> None:
    _, ctl = controller(store, chain())
    ctl.run()
    backend2, ctl2 = controller(store, chain(min_words=5))
    with pytest.raises(ConfigError, match="--rerun a"):
        ctl2.submit("a")
    state = ctl2.submit("a", from_scratch=True)
    assert state.stages["a"].state == "succeeded" and backend2.submits == [("a", 2)]


def test_a_damaged_claim_claims_nothing(store: LocalStore) -> None:
    store.put("_sail/outputs/data/a.json", b"{not json")
    store.put("_sail/outputs/data/b.json", b'{"prefix": "data/b"}')  # no owner
    backend, ctl = controller(store, chain())
    assert ctl.run().status == "succeeded" and len(backend.submits) == 3
    owners = {(c.prefix, c.run, c.stage) for c in read_claims(store)}
    assert owners == {("data/a", "r1", "a"), ("data/b", "r1", "b"), ("data/c", "r1", "c")}  # repaired


def test_rerun_cancels_a_live_attempt_before_deleting_its_results(store: LocalStore) -> None:
    backend, ctl = controller(store, chain())
    ref = backend.submit(ctl.pipeline, ctl.pipeline.stage("c"), 1)  # still running, controller gone
    fp = ctl.fingerprints["c"]
    save_state(store, RunState(run="r1", stages={"c": StageState(
        name="c", state="running", fingerprint=fp,
        attempts=[AttemptRecord(attempt=1, name=ref.name, phase="Running", submitted_at=0.0)])}))
    write_outputs(store, "data/c")
    state = ctl.run(only=["c"], rerun=["c"])
    assert backend.cancels == [ref]  # before its outputs were deleted and attempt 2 started
    assert backend.submits == [("c", 1), ("c", 2)]
    assert [a.phase for a in state.stages["c"].attempts] == ["Cancelled", "Succeeded"]
