"""`python -m sailk8s run/submit/status/logs/cancel` as subprocesses on the local backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ctl_support import CONTROLLERS, sail, set_fake, write_pipeline

from sailk8s.cli.runtools import kubectl_lines
from sailk8s.ledger.runstate import load_state
from sailk8s.settings import Settings
from sailk8s.spec import parse_pipeline
from sailk8s.store.local import LocalStore
from sailk8s.testing import wait_for


def start(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "sailk8s", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    CONTROLLERS.append(proc)
    return proc


def events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def status_json(path: Path) -> dict[str, Any]:
    res = sail("status", "-f", str(path))
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_run_then_rerun_skips_and_status_reports(tmp_path: Path, local_env: dict[str, Path],
                                                 file_store: LocalStore) -> None:
    path = write_pipeline(tmp_path, local_env["store"])
    res = sail("run", "-f", str(path))
    assert res.returncode == 0, res.stderr
    evs = events(res.stdout)  # piped: JSON lines
    assert evs[-1]["event"] == "run_finished" and evs[-1]["status"] == "succeeded"
    submitted = [e["stage"] for e in evs if e["event"] == "attempt_submitted"]
    assert sorted(submitted) == ["a", "b", "c"] and submitted.index("a") < submitted.index("b")
    assert file_store.get("data/b/shard-000001.tar") == b"b:1"

    again = sail("run", "-f", str(path))
    assert again.returncode == 0
    assert not [e for e in events(again.stdout) if e["event"] == "attempt_submitted"]

    st = status_json(path)
    a = next(r for r in st["stages"] if r["stage"] == "a")
    assert st["status"] == "succeeded"
    assert (a["state"], a["attempts"], a["shards_done"], a["shards_total"], a["percent"]) == \
        ("succeeded", 1, 3, 3, 100.0)

    logs = sail("logs", "r1", "a", "-p", str(path))
    assert logs.returncode == 0 and "[rank 0] finished" in logs.stdout
    rank0 = sail("logs", "r1", "a", "-p", str(path), "--rank", "0", "--follow")
    assert rank0.stdout.splitlines()[-1] == "finished"


@pytest.mark.slow
def test_changed_config_is_refused_then_rerun_through_the_cli(tmp_path: Path, local_env: dict[str, Path],
                                                                file_store: LocalStore) -> None:
    path = write_pipeline(tmp_path, local_env["store"])
    assert sail("run", "-f", str(path)).returncode == 0
    shorter = {"preset": "tiny", "max_new_tokens": 8}
    changed = write_pipeline(tmp_path, local_env["store"], b={"config": shorter})
    res = sail("run", "-f", str(changed))
    assert res.returncode == 3, res.stderr  # a config error, before anything runs
    assert "'b' made with another definition" in res.stderr and "--rerun b" in res.stderr
    assert not events(res.stdout)
    flagged = {r["stage"]: r["definition_changed"] for r in status_json(changed)["stages"]}
    assert flagged == {"a": False, "b": True, "c": False}  # status says so before any run

    res = sail("run", "-f", str(changed), "--rerun", "b")
    assert res.returncode == 0, res.stderr
    submitted = [(e["stage"], e["attempt"]) for e in events(res.stdout) if e["event"] == "attempt_submitted"]
    assert submitted == [("b", 2)]
    assert file_store.get("data/b/shard-000001.tar") == b"b:1"
    assert sail("run", "-f", str(changed)).returncode == 0  # the new definition is now the recorded one


@pytest.mark.slow
def test_only_and_failure_classes_through_the_cli(tmp_path: Path, local_env: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # a: app failure then success; c: permanent failure (exit 3) on its first attempt.
    set_fake(monkeypatch, a={"fail": {"1": 1}, "fail_after": 1}, c={"fail": {"1": 3}})
    path = write_pipeline(tmp_path, local_env["store"])
    res = sail("run", "-f", str(path), "--only", "a,c")
    assert res.returncode == 1
    st = status_json(path)
    rows = {r["stage"]: r for r in st["stages"]}
    assert rows["a"]["state"] == "succeeded" and rows["a"]["attempts"] == 2
    assert rows["b"]["state"] == "pending" and rows["b"]["attempts"] == 0  # not selected
    assert rows["c"]["state"] == "failed" and rows["c"]["attempts"] == 1
    assert "permanent" in rows["c"]["last_error"] and "exit code 3" in rows["c"]["last_error"]
    state = load_state(LocalStore(local_env["store"]), "r1")
    assert state is not None and [a.failure for a in state.stages["a"].attempts] == ["app", None]
    # a's second attempt skipped the shard the first one finished
    assert len(list(LocalStore(local_env["store"]).list("runs/r1/a/writes/"))) == 3


@pytest.mark.slow
def test_killed_controller_restarts_and_adopts(tmp_path: Path, local_env: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    gate = tmp_path / "gate"  # stage a holds its shards until the controller is dead (no race)
    set_fake(monkeypatch, a={"sleep": 0.5, "gate": str(gate)})
    path = write_pipeline(tmp_path, local_env["store"])
    store = LocalStore(local_env["store"])
    proc = start("run", "-f", str(path))
    wait_for(lambda: list(local_env["local"].glob("*/r1/*/a/1/child.json")), what="stage a to start")
    a_dir = next(local_env["local"].glob("*/r1/*/a/1"))
    proc.send_signal(signal.SIGKILL)  # kill -9 the controller mid-run
    proc.wait(timeout=120)
    assert not (a_dir / "exit.json").exists()  # the attempt outlived its controller
    gate.touch()
    res = sail("run", "-f", str(path))
    assert res.returncode == 0, res.stderr
    adopted = [e for e in events(res.stdout) if e["event"] == "attempt_adopted"]
    assert "a" in [e["stage"] for e in adopted]  # (c, run concurrently, may be adopted too)
    state = load_state(store, "r1")
    assert state is not None and state.status == "succeeded"
    assert [len(state.stages[s].attempts) for s in "abc"] == [1, 1, 1]  # no duplicate attempt
    assert sorted(p.name for p in (a_dir.parent).iterdir()) == ["1"]
    writes = [k.rsplit("/", 1)[1][:12] for k in store.list("runs/r1/a/writes/")]
    assert sorted(writes) == ["shard-000000", "shard-000001", "shard-000002"]  # each shard once
    assert [store.get(f"data/a/shard-00000{i}.tar") for i in range(3)] == [b"a:0", b"a:1", b"a:2"]


@pytest.mark.slow
def test_lock_cancel_and_detached_submit(tmp_path: Path, local_env: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    set_fake(monkeypatch, a={"hang": True})
    path = write_pipeline(tmp_path, local_env["store"])
    proc = start("run", "-f", str(path))
    wait_for(lambda: list(local_env["local"].glob("*/r1/*/a/1/child.json")), what="stage a to start")

    # The child exists before the controller has recorded its attempt: wait for the record.
    def running_row() -> dict[str, Any]:
        return {r["stage"]: r for r in status_json(path)["stages"]}

    def a_running() -> bool:
        row = running_row()["a"]
        return (row["state"], row["phase"], row["attempt"]) == ("running", "Running", "r1-a-1")

    wait_for(a_running, what="stage a's attempt recorded as running")
    second = sail("run", "-f", str(path))
    assert second.returncode not in (0, None)
    assert second.stderr.strip().count("\n") == 0 and "driven by another controller" in second.stderr
    assert "Traceback" not in second.stderr

    assert running_row()["b"]["state"] == "pending"

    res = sail("cancel", "r1", "-f", str(path))
    assert res.returncode == 0 and "r1-a-1" in res.stdout
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    st = {r["stage"]: r for r in status_json(path)["stages"]}
    assert st["a"]["state"] == "cancelled" and st["b"]["state"] == "blocked"

    # A detached submit returns at once; status then sees the attempt finish.
    set_fake(monkeypatch, a={"sleep": 0.1})
    res = sail("submit", "a", "-f", str(path), "--detach")
    assert res.returncode == 0, res.stderr
    assert [e["event"] for e in events(res.stdout)] == ["attempt_submitted"]
    wait_for(lambda: status_json(path)["stages"][0]["phase"] == "Succeeded", what="detached attempt")
    res = sail("submit", "a", "-f", str(path))  # follows (adopts) the finished attempt
    assert res.returncode == 0, res.stderr
    state = load_state(LocalStore(local_env["store"]), "r1")
    assert state is not None and [a.phase for a in state.stages["a"].attempts] == ["Cancelled", "Succeeded"]


def test_user_errors_are_one_line(tmp_path: Path, local_env: dict[str, Path]) -> None:
    path = write_pipeline(tmp_path, local_env["store"])
    cases = [
        (("run", "-f", str(tmp_path / "missing.yaml")), "no such pipeline file"),
        (("run", "-f", str(path), "--only", "zz"), "no stage named 'zz'"),
        (("submit", "zz", "-f", str(path)), "no stage named 'zz'"),
        (("logs", "r1", "a", "-p", str(path)), "has no attempt of stage 'a'"),
        (("run", "-f", str(path), "--run", "Bad_Name"), "--run"),
    ]
    for args, needle in cases:
        res = sail(*args)
        assert res.returncode == 3, (args, res.stderr)
        assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "Traceback" not in res.stderr


def test_kubectl_lines_only_for_kubernetes(tmp_path: Path) -> None:
    base = {"run": "r1", "store": "s3://bucket/x", "namespace": "ml",
            "stages": [{"name": "sft", "kind": "filter"}]}
    k8s = parse_pipeline({**base, "backend": "kubernetes"})
    lines = kubectl_lines(k8s, Settings(), "sft")
    assert lines == ["kubectl get pytorchjobs -n ml -l sail.io/run=r1",
                     "kubectl logs -f -n ml -l sail.io/run=r1,sail.io/stage=sft,"
                     "training.kubeflow.org/replica-type=master"]
    assert kubectl_lines(parse_pipeline({**base, "backend": "local"}), Settings()) == []


def test_outputs_lists_claims_and_releases_one(tmp_path: Path, local_env: dict[str, Path],
                                               file_store: LocalStore) -> None:
    from sailk8s.ledger.claims import claim_outputs

    claim_outputs(file_store, "other", "ingest", ["data/a"])
    path = write_pipeline(tmp_path, local_env["store"])
    res = sail("outputs", "-f", str(path))
    assert res.returncode == 0, res.stderr
    assert [json.loads(line) for line in res.stdout.splitlines()] == [
        {"prefix": "data/a", "run": "other", "stage": "ingest"}]
    refused = sail("run", "-f", str(path))  # stage a of run r1 also writes data/a
    assert refused.returncode == 3 and "written by stage 'ingest' of run 'other'" in refused.stderr
    res = sail("outputs", "-f", str(path), "--release", "data/a")
    assert res.returncode == 0
    assert "released 'data/a' (was written by stage 'ingest' of run 'other')" in res.stdout
    missing = sail("outputs", "-f", str(path), "--release", "data/zz")
    assert missing.returncode == 3 and "no claim on 'data/zz'" in missing.stderr
    assert sail("run", "-f", str(path)).returncode == 0
