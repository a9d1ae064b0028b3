"""Pure status mapping: job conditions + pod states -> Phase, FailureClass, reason, message."""

from __future__ import annotations

from typing import Any

import pytest

from sailk8s.backends.base import Phase
from sailk8s.backends.kubernetes.status import derive_status, next_deadline, parse_time
from sailk8s.exitcodes import FailureClass
from sailk8s.testing import podstatus as ps

T0 = "2026-11-27T10:00:00Z"
NOW = parse_time(T0) or 0.0


def job(*conds: tuple[str, str], message: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": "r1-s-1"},
        "status": {
            "startTime": T0,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": message or r, "lastTransitionTime": T0}
                for t, r in conds
            ],
        },
    }


def pod(name: str = "r1-s-1-master-0", rtype: str = "master", index: int = 0) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {
                "training.kubeflow.org/replica-type": rtype,
                "training.kubeflow.org/replica-index": str(index),
            },
        },
        "spec": {"nodeName": "gpu-node-1", "containers": [{"name": "pytorch", "image": "img:1"}]},
    }


def with_status(p: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {**p, "status": status}


RUNNING = job(("Created", "PyTorchJobCreated"), ("Running", "PyTorchJobRunning"))


def healthy(p: dict[str, Any]) -> dict[str, Any]:
    return with_status(p, ps.running(p, T0, T0, "10.1.0.2"))


def test_missing_job_is_unknown() -> None:
    assert derive_status(None, [], now=NOW).phase == Phase.UNKNOWN


def test_created_is_pending_and_running_is_running() -> None:
    st = derive_status(job(("Created", "PyTorchJobCreated")), [], now=NOW)
    assert st.phase == Phase.PENDING and st.failure is None
    st = derive_status(RUNNING, [healthy(pod())], now=NOW)
    assert st.phase == Phase.RUNNING and st.started_at == NOW


def test_suspended_by_kueue_is_pending() -> None:
    st = derive_status(job(("Created", "x"), ("Suspended", "PyTorchJobSuspended")), [], now=NOW)
    assert (st.phase, st.reason) == (Phase.PENDING, "Suspended")
    queued = job(("Created", "x"), ("Suspended", "PyTorchJobSuspended"))
    queued["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "gpu-batch"}
    st = derive_status(queued, [], now=NOW)  # the same words as a suspended TrainJob's
    assert st.message == "waiting for Kueue admission (queue gpu-batch)"


def test_restarting_is_running() -> None:
    st = derive_status(job(("Created", "x"), ("Restarting", "PyTorchJobRestarting")), [], now=NOW)
    assert (st.phase, st.reason) == (Phase.RUNNING, "Restarting")


def test_succeeded_wins_over_pod_noise() -> None:
    p = pod()
    done = with_status(p, ps.terminated(p, T0, T0, 0, "Completed"))
    st = derive_status(job(("Created", "x"), ("Succeeded", "PyTorchJobSucceeded")), [done], now=NOW)
    assert st.phase == Phase.SUCCEEDED and st.failure is None


@pytest.mark.parametrize(
    "code, failure",
    [
        (1, FailureClass.APP),
        (3, FailureClass.PERMANENT),
        (4, FailureClass.PERMANENT),
        (75, FailureClass.INFRA),
        (143, FailureClass.INFRA),
    ],
)
def test_failed_job_is_classified_by_exit_code(code: int, failure: FailureClass) -> None:
    p = pod()
    dead = with_status(p, ps.terminated(p, T0, T0, code, "Error"))
    st = derive_status(
        job(("Created", "x"), ("Failed", "PyTorchJobFailed")), [healthy(pod("w", "worker")), dead], now=NOW
    )
    assert (st.phase, st.failure, st.exit_code, st.reason) == (Phase.FAILED, failure, code, "ExitCode")


def test_failed_job_without_pods_counts_as_app() -> None:
    st = derive_status(job(("Failed", "PyTorchJobFailed")), [], now=NOW)
    assert (st.phase, st.failure) == (Phase.FAILED, FailureClass.APP)


def test_deadline_exceeded() -> None:
    st = derive_status(
        job(("Failed", "PyTorchJobFailed"), message="Job was active longer than specified deadline"),
        [],
        now=NOW,
    )
    assert (st.reason, st.failure) == ("DeadlineExceeded", FailureClass.APP)


def test_evicted_pod_fails_a_running_job_as_infra() -> None:
    p = pod("r1-s-1-worker-0", "worker")
    ev = with_status(
        p,
        ps.terminated(
            p, T0, T0, 137, "Error", pod_reason="Evicted", pod_message="The node was low on resource: memory."
        ),
    )
    st = derive_status(RUNNING, [healthy(pod()), ev], now=NOW)
    assert (st.phase, st.reason, st.failure) == (Phase.FAILED, "Evicted", FailureClass.INFRA)
    assert "r1-s-1-worker-0" in (st.message or "") and "low on resource" in (st.message or "")
    assert st.details["pod"] == "r1-s-1-worker-0"


def test_preempted_pod_is_infra() -> None:
    p = pod()
    pre = with_status(
        p,
        ps.terminated(
            p, T0, T0, 143, "Error", disruption=("PreemptionByScheduler", "preempted by high-prio")
        ),
    )
    st = derive_status(RUNNING, [pre], now=NOW)
    assert (st.reason, st.failure) == ("Preempted", FailureClass.INFRA)


def test_node_lost_while_job_says_running_is_infra() -> None:
    p = pod()
    lost = with_status(
        p, ps.node_lost(ps.running(p, T0, T0, "10.1.0.2"), T0, "gpu-node-1", p["metadata"]["name"])
    )
    st = derive_status(RUNNING, [lost], now=NOW)
    assert (st.phase, st.reason, st.failure) == (Phase.FAILED, "NodeLost", FailureClass.INFRA)


def test_not_ready_node_becomes_node_lost_only_after_grace() -> None:
    p = healthy(pod())
    p["status"]["conditions"] = [
        c if c["type"] != "Ready" else ps.condition("Ready", False, T0, "NodeNotReady")
        for c in p["status"]["conditions"]
    ]
    assert derive_status(RUNNING, [p], now=NOW + 10, node_lost_after=60).phase == Phase.RUNNING
    st = derive_status(RUNNING, [p], now=NOW + 61, node_lost_after=60)
    assert (st.reason, st.failure) == ("NodeLost", FailureClass.INFRA)
    assert next_deadline([p], node_lost_after=60) == NOW + 60


def test_oomkilled_is_app_with_a_hint() -> None:
    p = pod()
    oom = with_status(p, ps.terminated(p, T0, T0, 137, "OOMKilled"))
    st = derive_status(RUNNING, [oom], now=NOW)
    assert (st.phase, st.reason, st.failure, st.exit_code) == (
        Phase.FAILED,
        "OOMKilled",
        FailureClass.APP,
        137,
    )
    assert "resources.memory" in (st.message or "")


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "InvalidImageName"])
def test_image_that_cannot_be_pulled_is_permanent(reason: str) -> None:
    p = pod()
    bad = with_status(p, ps.waiting(p, T0, "gpu-node-1", reason, "pull access denied for img:1"))
    st = derive_status(job(("Created", "x")), [bad], now=NOW)
    assert (st.phase, st.reason, st.failure) == (Phase.FAILED, reason, FailureClass.PERMANENT)
    assert "'img:1' cannot be pulled" in (st.message or "")


def test_missing_secret_is_permanent() -> None:
    p = pod()
    bad = with_status(
        p, ps.waiting(p, T0, "n", "CreateContainerConfigError", 'secret "sail-store-credentials" not found')
    )
    st = derive_status(job(("Created", "x")), [bad], now=NOW)
    assert (st.reason, st.failure) == ("CreateContainerConfigError", FailureClass.PERMANENT)
    assert "sail-store-credentials" in (st.message or "")


@pytest.mark.parametrize("code, failure", [(1, FailureClass.APP), (3, FailureClass.PERMANENT)])
def test_crash_loop_is_classified_by_last_exit_code(code: int, failure: FailureClass) -> None:
    p = pod()
    loop = with_status(p, ps.crash_loop(p, T0, T0, "10.1.0.2", 4, code))
    st = derive_status(RUNNING, [loop], now=NOW)
    assert (st.phase, st.reason, st.failure, st.exit_code) == (
        Phase.FAILED,
        "CrashLoopBackOff",
        failure,
        code,
    )


def test_unschedulable_is_pending_then_infra_failure() -> None:
    p = pod()
    stuck = with_status(p, ps.unschedulable(p, T0, "0/8 nodes are available: 8 Insufficient nvidia.com/gpu."))
    st = derive_status(job(("Created", "x")), [stuck], now=NOW + 30, unschedulable_after=600)
    assert (st.phase, st.reason, st.failure) == (Phase.PENDING, "Unschedulable", None)
    assert "Insufficient nvidia.com/gpu" in (st.message or "")
    st = derive_status(job(("Created", "x")), [stuck], now=NOW + 600, unschedulable_after=600)
    assert (st.phase, st.reason, st.failure) == (Phase.FAILED, "Unschedulable", FailureClass.INFRA)
    assert next_deadline([stuck], unschedulable_after=600) == NOW + 600


def test_master_evidence_comes_first() -> None:
    w = pod("r1-s-1-worker-0", "worker")
    m = pod()
    st = derive_status(
        RUNNING,
        [
            with_status(w, ps.terminated(w, T0, T0, 137, "OOMKilled")),
            with_status(m, ps.waiting(m, T0, "n", "ErrImagePull", "denied")),
        ],
        now=NOW,
    )
    assert st.details["pod"] == "r1-s-1-master-0"
