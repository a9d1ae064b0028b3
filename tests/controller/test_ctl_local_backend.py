"""LocalBackend with real processes: exit codes, logs, archive, cancel, adoption, torchrun ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from ctl_support import set_fake

from sailk8s.backends.base import AttemptRef, Phase
from sailk8s.backends.local.backend import LocalBackend
from sailk8s.errors import BackendError
from sailk8s.exitcodes import FailureClass
from sailk8s.spec import Pipeline, parse_pipeline
from sailk8s.store.local import LocalStore
from sailk8s.testing import wait_for


def pipeline(store: LocalStore, procs: int = 1) -> Pipeline:
    return parse_pipeline({"run": "r1", "store": store.uri, "stages": [
        {"name": "a", "kind": "filter", "outputs": ["data/a"], "resources": {"procs_per_node": procs}}]})


def test_success_logs_and_archive(file_store: LocalStore, local_env: dict[str, Path]) -> None:
    p = pipeline(file_store)
    backend = LocalBackend(file_store)
    ref = backend.submit(p, p.stage("a"), 1)
    st = backend.wait(ref, timeout=60)
    assert st.phase is Phase.SUCCEEDED and st.exit_code == 0
    assert file_store.get("data/a/shard-000002.tar") == b"a:2"
    lines = list(backend.logs(ref))
    assert lines[0].startswith("[rank 0] start stage=a attempt=1") and lines[-1] == "[rank 0] finished"
    archived = file_store.get("runs/r1/a/attempts/1/logs/rank-0.log").decode()
    assert "shard 2 done" in archived
    # Local files gone (another machine, cleanup): the archive still answers.
    shutil.rmtree(backend.attempt_dir(ref))
    assert "[rank 0] finished" in list(backend.logs(ref))
    assert list(backend.logs(ref, rank=0))[-1] == "finished"
    with pytest.raises(BackendError, match="no logs for rank 3"):
        list(backend.logs(ref, rank=3))


def test_an_enclosing_rendezvous_does_not_leak_into_the_attempt(
    file_store: LocalStore, local_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a pod of another PyTorchJob, or after in-process training: a port someone holds.
    for var, value in {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "5", "MASTER_ADDR": "10.0.0.9",
                       "MASTER_PORT": "1", "TORCHELASTIC_RUN_ID": "other"}.items():
        monkeypatch.setenv(var, value)
    p = pipeline(file_store)
    backend = LocalBackend(file_store)
    ref = backend.submit(p, p.stage("a"), 1)
    assert backend.wait(ref, timeout=60).phase is Phase.SUCCEEDED
    first, *_ = backend.logs(ref)
    assert first.startswith("[rank 0] start stage=a attempt=1 rank=0/1 ")
    assert file_store.exists("data/a/shard-000000.tar")  # one process did every shard


@pytest.mark.parametrize(("code", "failure"), [(3, FailureClass.PERMANENT), (1, FailureClass.APP),
                                               (75, FailureClass.INFRA)])
def test_exit_codes_map_to_failure_classes(file_store: LocalStore, local_env: dict[str, Path],
                                           monkeypatch: pytest.MonkeyPatch, code: int,
                                           failure: FailureClass) -> None:
    set_fake(monkeypatch, a={"fail": {"1": code}})
    p = pipeline(file_store)
    backend = LocalBackend(file_store)
    st = backend.wait(backend.submit(p, p.stage("a"), 1), timeout=60)
    assert (st.phase, st.failure, st.exit_code) == (Phase.FAILED, failure, code)
    assert f"exit code {code}: failing with exit code {code}" == st.message


def test_killed_workload_is_infra(file_store: LocalStore, local_env: dict[str, Path],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    set_fake(monkeypatch, a={"hang": True})
    p = pipeline(file_store)
    backend = LocalBackend(file_store)
    ref = backend.submit(p, p.stage("a"), 1)
    lines = backend.logs(ref, follow=True)
    # The workload runs under the pod's launcher (child.json): it names its own pid.
    first = next(lines)
    assert first.startswith("[rank 0] start stage=a") and "pid=" in first
    assert next(lines) == "[rank 0] hanging"
    os.kill(int(first.rsplit("pid=", 1)[1]), signal.SIGKILL)  # OOM killer, node pressure...
    st = backend.wait(ref, timeout=30)
    # As in a pod: the launcher exits with the killed rank's code, 128 + SIGKILL.
    assert (st.phase, st.failure, st.reason, st.exit_code) == (
        Phase.FAILED, FailureClass.INFRA, "Killed", 137)
    assert "SIGKILL" in (st.message or "")


def test_cancel_kills_the_process_group(file_store: LocalStore, local_env: dict[str, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    set_fake(monkeypatch, a={"hang": True})
    p = pipeline(file_store)
    backend = LocalBackend(file_store, grace_seconds=2)
    ref = backend.submit(p, p.stage("a"), 1)
    pid = _wait_json(backend.attempt_dir(ref) / "child.json")["pid"]
    assert backend.status(ref).phase is Phase.RUNNING
    backend.cancel(ref)
    assert backend.status(ref).phase is Phase.CANCELLED
    assert not _pid_running(pid)
    backend.cancel(ref)  # cancelling a finished attempt is a no-op


def test_second_submit_adopts_and_other_process_waits(file_store: LocalStore, local_env: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    set_fake(monkeypatch, a={"sleep": 0.3})
    p = pipeline(file_store)
    first = LocalBackend(file_store)
    ref = first.submit(p, p.stage("a"), 1)
    other = LocalBackend(file_store)  # e.g. a restarted controller: not the parent process
    assert other.submit(p, p.stage("a"), 1) == ref
    assert other.status(ref).phase in (Phase.PENDING, Phase.RUNNING)
    st = other.wait(ref, timeout=60)  # pidfd wait on a process that is not our child
    assert st.phase is Phase.SUCCEEDED
    writes = list(file_store.list("runs/r1/a/writes/"))
    assert len(writes) == 3  # one execution, each shard written once
    assert other.status(AttemptRef("r1", "a", 7)).phase is Phase.UNKNOWN


def test_dead_supervisor_is_lost_infra(file_store: LocalStore, local_env: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    set_fake(monkeypatch, a={"hang": True})
    p = pipeline(file_store)
    backend = LocalBackend(file_store)
    ref = backend.submit(p, p.stage("a"), 1)
    d = backend.attempt_dir(ref)
    child = _wait_json(d / "child.json")["pid"]
    os.killpg(child, signal.SIGKILL)
    os.kill(json.loads((d / "supervisor.json").read_text())["pid"], signal.SIGKILL)
    fresh = LocalBackend(file_store)  # no child handle: judged from the records alone
    wait_for(lambda: fresh.status(ref).phase is not Phase.RUNNING, what="the attempt judged from its records")
    backend.status(ref)  # reap our zombie
    st = fresh.status(ref)
    assert (st.phase, st.failure, st.reason) == (Phase.FAILED, FailureClass.INFRA, "Lost")


@pytest.mark.slow
def test_torchrun_two_ranks_split_logs_and_keep_exit_code(file_store: LocalStore, local_env: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    set_fake(monkeypatch, a={"shards": 4, "fail": {"2": 3}, "fail_rank": 1, "fail_after": 1})
    p = pipeline(file_store, procs=2)
    backend = LocalBackend(file_store)
    assert backend.command(p.stage("a"))[2:6] == ["jobs.launch", "--standalone",
                                                  "--nproc-per-node=2", "--tee=3"]
    ok = backend.wait(backend.submit(p, p.stage("a"), 1), timeout=120)
    assert ok.phase is Phase.SUCCEEDED
    assert "rank=1/2" in file_store.get("runs/r1/a/attempts/1/logs/rank-1.log").decode()
    assert "rank=0/2" in file_store.get("runs/r1/a/attempts/1/logs/rank-0.log").decode()
    for key in list(file_store.list("runs/r1/a/done/")):
        file_store.delete(key)
    bad = backend.wait(backend.submit(p, p.stage("a"), 2), timeout=120)
    # torchrun itself exits 1; the launcher keeps the rank's real code (3, permanent).
    assert (bad.phase, bad.exit_code, bad.failure) == (Phase.FAILED, 3, FailureClass.PERMANENT)


def _wait_json(path: Path, timeout: float = 120) -> dict[str, int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def _pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
