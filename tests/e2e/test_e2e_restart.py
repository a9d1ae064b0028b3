"""kill -9 the controller while a stage's PyTorchJob runs: a restarted one adopts the job and finishes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from e2e_support import (
    JOB_APIS,
    NAMESPACE,
    RUN,
    Cluster,
    assert_same_outputs,
    events,
    reduced_quickstart,
    start_sail,
    write_pipeline,
)

from sailk8s.ledger.runstate import load_state
from sailk8s.store.local import LocalStore
from sailk8s.testing import wait_for

STAGE = "captioner"
JOB = f"{RUN}-{STAGE}-1"


def rank0_pods(cluster: Cluster) -> list[str]:
    """The captioner's rank-0 pods: `<job>-master-0` (PyTorchJob), `<job>-node-0-0-<hash>` (TrainJob)."""
    return [str(p["metadata"]["name"]) for p in cluster.pods()  # type: ignore[index]
            if str(p["metadata"]["name"]).startswith((f"{JOB}-master-0", f"{JOB}-node-0-0-"))]  # type: ignore[index]


def phase_of(cluster: Cluster, pod: str | None) -> str | None:
    for obj in cluster.pods():
        meta = obj.get("metadata")
        if isinstance(meta, dict) and meta.get("name") == pod:
            status = obj.get("status")
            return status.get("phase") if isinstance(status, dict) else None
    return None


def rank0_phase(cluster: Cluster) -> str | None:
    pods = rank0_pods(cluster)
    return phase_of(cluster, pods[0]) if pods else None


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("job_api", JOB_APIS)
def test_killed_controller_restarts_and_adopts_the_running_job(
        tmp_path: Path, cluster: Cluster, local_reference: Path, job_api: str) -> None:
    store = tmp_path / "store"
    doc = reduced_quickstart(store, backend="kubernetes", tail=True, job_api=job_api)
    path = write_pipeline(tmp_path / "pipeline.yaml", doc)
    env = cluster.env()
    first = start_sail("run", "-f", str(path), env=env, log=tmp_path / "first.log")

    # The captioner's rank-0 pod runs its (real) training process: freeze it there (it stays
    # Running), so that it cannot finish before the restarted controller has adopted it, however
    # busy the machine. Then kill the controller.
    def freeze_rank0() -> bool:
        pods = rank0_pods(cluster)
        return bool(pods) and cluster.operator.pause(pods[0], NAMESPACE)

    wait_for(freeze_rank0, timeout=300, what=f"{JOB}'s rank 0 to run")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    (master,) = rank0_pods(cluster)
    assert phase_of(cluster, master) == "Running"  # the job outlives its controller

    second_log = tmp_path / "second.log"
    second = start_sail("run", "-f", str(path), "--lock-wait", "60", env=env, log=second_log)
    wait_for(lambda: second.poll() is not None or "attempt_adopted" in second_log.read_text(), timeout=300,
             what="the restarted controller to adopt the job")
    assert cluster.operator.pause(master, NAMESPACE, paused=False)  # thaw: the job finishes now
    assert second.wait(timeout=600) == 0, second_log.read_text()[-4000:]
    evs = events(second_log.read_text())
    adopted = [e for e in evs if e["event"] == "attempt_adopted"]
    # The restarted controller adopted the job while it was still running, and submitted no
    # new attempt of it.
    assert [(e["stage"], e["attempt"], e["phase"]) for e in adopted] == [(STAGE, 1, "Running")]
    assert STAGE not in [e["stage"] for e in evs if e["event"] == "attempt_submitted"]
    assert "ingest" in [e["stage"] for e in evs if e["event"] == "stage_skipped"]  # already complete
    assert evs[-1]["event"] == "run_finished" and evs[-1]["status"] == "succeeded"

    # The API holds exactly one job per stage, all attempt 1; the captioner's master pod ran once.
    names = [s["name"] for s in doc["stages"]]
    jobs = sorted(j["metadata"]["name"] for j in cluster.jobs(job_api))  # type: ignore[index]
    assert jobs == sorted(f"{RUN}-{n}-1" for n in names)
    assert cluster.created(job_api) == len(names)
    captioner_pods = [p["metadata"]["name"] for p in cluster.pods()  # type: ignore[index]
                      if p["metadata"]["labels"].get("sail.io/stage") == STAGE]  # type: ignore[index]
    assert captioner_pods == [master]

    state = load_state(LocalStore(store), RUN)
    assert state is not None and state.status == "succeeded"
    assert {n: len(st.attempts) for n, st in state.stages.items()} == {n: 1 for n in names}
    assert_same_outputs(local_reference, store)
