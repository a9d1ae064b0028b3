"""Pure TrainJob status mapping: TrainJob conditions + jobsStatus + JobSet pods -> the one vocabulary."""

from __future__ import annotations

from typing import Any

import pytest

from sailk8s.backends.base import Phase
from sailk8s.backends.kubernetes import status as kube_status
from sailk8s.backends.kubernetes.jobapi import job_api
from sailk8s.backends.kubernetes.logs import ranked_pods
from sailk8s.backends.kubernetes.status import parse_time
from sailk8s.backends.kubernetes.trainstatus import derive_trainjob_status
from sailk8s.exitcodes import FailureClass
from sailk8s.testing import podstatus as ps

T0 = "2026-11-27T10:00:00Z"
T1 = "2026-11-27T11:00:00Z"
NOW = parse_time(T0) or 0.0


def trainjob(
    *conds: tuple[str, str], queue: str | None = None, active: int = 0, message: str = ""
) -> dict[str, Any]:
    labels = {"sail.io/run": "r1", **({"kueue.x-k8s.io/queue-name": queue} if queue else {})}
    return {
        "metadata": {"name": "r1-s-1", "labels": labels},
        "status": {
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": message or r, "lastTransitionTime": T1}
                for t, r in conds
            ],
            "jobsStatus": [
                {"name": "node", "active": active, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}
            ],
        },
    }


def node_pod(rank: int) -> dict[str, Any]:
    """A pod as JobSet and the Job controller make it for a TrainJob's node `rank`."""
    return {
        "metadata": {
            "name": f"r1-s-1-node-0-{rank}-abcde",
            "labels": {
                "sail.io/run": "r1",
                "jobset.sigs.k8s.io/jobset-name": "r1-s-1",
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "jobset.sigs.k8s.io/job-index": "0",
                "batch.kubernetes.io/job-completion-index": str(rank),
                "trainer.kubeflow.org/trainjob-ancestor-step": "trainer",
            },
        },
        "spec": {"nodeName": "gpu-node-1", "containers": [{"name": "node", "image": "img:1"}]},
    }


def with_status(p: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {**p, "status": status}


def test_created_is_pending_and_active_nodes_are_running() -> None:
    st = derive_trainjob_status(trainjob(("Created", "JobSetCreated")), [], now=NOW)
    assert (st.phase, st.reason) == (Phase.PENDING, "Created")
    st = derive_trainjob_status(trainjob(("Created", "JobSetCreated"), active=1), [], now=NOW)
    assert (st.phase, st.reason) == (Phase.RUNNING, "Running")
    p = node_pod(0)
    running = with_status(p, ps.running(p, T0, T0, "10.1.0.2"))
    st = derive_trainjob_status(trainjob(("Created", "JobSetCreated")), [running], now=NOW)
    assert st.phase == Phase.RUNNING and st.started_at == NOW


def test_suspended_by_kueue_says_it_waits_for_admission() -> None:
    st = derive_trainjob_status(
        trainjob(("Created", "c"), ("Suspended", "Suspended"), queue="gpu-batch"), [], now=NOW
    )
    assert (st.phase, st.reason) == (Phase.PENDING, "Suspended")
    assert st.message == "waiting for Kueue admission (queue gpu-batch)"
    st = derive_trainjob_status(
        trainjob(("Suspended", "Suspended"), message="TrainJob is suspended"), [], now=NOW
    )
    assert st.message == "TrainJob is suspended"


def test_complete_is_succeeded_with_its_time() -> None:
    st = derive_trainjob_status(trainjob(("Created", "c"), ("Complete", "JobSetCompleted")), [], now=NOW)
    assert st.phase == Phase.SUCCEEDED and st.finished_at == parse_time(T1)
    assert kube_status.job_finished(trainjob(("Complete", "x"))) and not kube_status.job_finished(trainjob())


@pytest.mark.parametrize(
    ("code", "failure"), [(1, FailureClass.APP), (2, FailureClass.PERMANENT), (75, FailureClass.INFRA)]
)
def test_failed_is_classified_by_the_failed_ranks_exit_code(code: int, failure: FailureClass) -> None:
    ok, bad = node_pod(0), node_pod(1)
    pods = [
        with_status(bad, ps.terminated(bad, T1, T0, code, "Error")),
        with_status(ok, ps.terminated(ok, T1, T0, 0, "Completed")),
    ]
    st = derive_trainjob_status(trainjob(("Failed", "JobSetFailed")), pods, now=NOW)
    assert (st.phase, st.failure, st.exit_code, st.reason) == (Phase.FAILED, failure, code, "ExitCode")


def test_failed_without_pods_counts_as_app_and_deadline_is_named() -> None:
    st = derive_trainjob_status(trainjob(("Failed", "JobSetFailed")), [], now=NOW)
    assert (st.phase, st.failure, st.reason) == (Phase.FAILED, FailureClass.APP, "JobSetFailed")
    st = derive_trainjob_status(trainjob(("Failed", "DeadlineExceeded")), [], now=NOW)
    assert st.reason == "DeadlineExceeded"


def test_pod_evidence_decides_before_the_trainjob_notices() -> None:
    p = node_pod(1)
    preempted = with_status(
        p,
        ps.terminated(
            p, T1, T0, 143, "Error", disruption=("PreemptionByScheduler", "preempted by a higher job")
        ),
    )
    st = derive_trainjob_status(trainjob(("Created", "c"), active=1), [preempted], now=NOW)
    assert (st.phase, st.reason, st.failure) == (Phase.FAILED, "Preempted", FailureClass.INFRA)
    oom = with_status(p, ps.terminated(p, T1, T0, 137, "OOMKilled"))
    st = derive_trainjob_status(trainjob(("Created", "c"), active=1), [oom], now=NOW)
    assert (st.reason, st.failure) == ("OOMKilled", FailureClass.APP)


def test_the_node_container_is_the_one_read_and_rank_is_the_completion_index() -> None:
    pods = [node_pod(2), node_pod(0), node_pod(1)]
    assert [r for r, _ in ranked_pods(pods)] == [0, 1, 2]
    assert [kube_status.pod_order_key(p)[1] for p in sorted(pods, key=kube_status.pod_order_key)] == [0, 1, 2]
    assert job_api("trainjob").container == "node" and job_api("pytorchjob").container == "pytorch"


def test_missing_trainjob_is_unknown() -> None:
    assert derive_trainjob_status(None, [], now=NOW).phase == Phase.UNKNOWN
