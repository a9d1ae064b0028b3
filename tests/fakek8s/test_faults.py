"""Every injected fault, observed through the real kubernetes client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from fk_support import GROUP, PLURAL, VERSION, pod_body, pytorchjob, wait_for_phase
from kubernetes import client

from sailk8s.testing import FakeKubernetes, FakeTrainingOperator, behaviors
from sailk8s.testing.behaviors import PodBehavior


def _until(check: Callable[[], object], timeout: float = 120.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


# -- request faults ---------------------------------------------------------------------------
def test_5xx_burst_then_recovery(core: client.CoreV1Api, kube: FakeKubernetes) -> None:
    fault = kube.faults.fail(503, times=2, path="/pods")
    for _ in range(2):
        with pytest.raises(client.ApiException) as info:
            core.list_namespaced_pod("default")
        assert info.value.status == 503
        assert json.loads(info.value.body)["reason"] == "ServiceUnavailable"
    assert core.list_namespaced_pod("default").items == []
    core.list_namespace()  # other paths never matched
    assert fault.hits == 2


def test_429_carries_retry_after(core: client.CoreV1Api, kube: FakeKubernetes) -> None:
    # urllib3 (under the kubernetes client) honours Retry-After on 429: one wait, then success.
    kube.faults.throttle(times=1, retry_after=1)
    started = time.monotonic()
    assert core.list_namespaced_pod("default").items == []
    assert time.monotonic() - started >= 0.9
    assert [r.status for r in kube.requests if r.path.endswith("/pods")] == [429, 200]


def test_409_on_create_and_403(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, kube: FakeKubernetes
) -> None:
    kube.faults.conflict_on_create(path="pytorchjobs")
    with pytest.raises(client.ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1"))
    assert info.value.status == 409 and json.loads(info.value.body)["reason"] == "AlreadyExists"
    kube.faults.fail(
        403,
        method="GET",
        path="pytorchjobs",
        message="pytorchjobs.kubeflow.org is forbidden: "
        'User "system:serviceaccount:default:sail" cannot list resource "pytorchjobs"',
    )
    with pytest.raises(client.ApiException) as forbidden:
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert forbidden.value.status == 403 and "cannot list" in json.loads(forbidden.value.body)["message"]
    kube.faults.clear()
    assert custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []


# -- pod faults -------------------------------------------------------------------------------
def _true_conditions(custom: client.CustomObjectsApi, name: str) -> list[str]:
    job = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name)
    return [c["type"] for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"]


def _run_scripted(
    kube: FakeKubernetes, custom: client.CustomObjectsApi, behavior: PodBehavior, policy: str = "Never"
) -> FakeTrainingOperator:
    operator = FakeTrainingOperator(kube, duration=0.5).start()
    operator.script(behavior, job="j1", replica="master")
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1", policy=policy))
    return operator


def test_oom_killed(kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    operator = _run_scripted(kube, custom, behaviors.oom_killed(after=0.05))
    try:
        operator.wait_for_job("j1", "Failed")
    finally:
        operator.stop()
    terminated = (
        core.read_namespaced_pod("j1-master-0", "default").status.container_statuses[0].state.terminated
    )
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)


def test_evicted(kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    operator = _run_scripted(kube, custom, behaviors.evicted(after=0.05))
    try:
        operator.wait_for_job("j1", "Failed")
    finally:
        operator.stop()
    pod = core.read_namespaced_pod("j1-master-0", "default")
    assert (pod.status.phase, pod.status.reason) == ("Failed", "Evicted")
    assert "low on resource" in pod.status.message
    assert "Evicted" in {e.reason for e in core.list_namespaced_event("default").items}


def test_preempted(kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    operator = _run_scripted(kube, custom, behaviors.preempted(after=0.05))
    try:
        operator.wait_for_job("j1", "Failed")
    finally:
        operator.stop()
    pod = core.read_namespaced_pod("j1-master-0", "default")
    disruption = [c for c in pod.status.conditions if c.type == "DisruptionTarget"]
    assert disruption and disruption[0].reason == "PreemptionByScheduler"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 143


def test_preempted_pod_is_recreated_under_exit_code_policy(
    kube: FakeKubernetes, custom: client.CustomObjectsApi
) -> None:
    operator = _run_scripted(kube, custom, behaviors.preempted(after=0.05), policy="ExitCode")
    try:
        job = operator.wait_for_job("j1")
        assert operator.restarts(job["metadata"]["uid"]) == 1
    finally:
        operator.stop()


def test_node_lost_leaves_pod_and_job_running(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    # The node is lost once the job is Running (injected then, not after a fixed delay that a busy
    # machine could outlast before the operator ever saw the pod run).
    operator = _run_scripted(kube, custom, behaviors.hang())
    try:
        _until(lambda: _true_conditions(custom, "j1")[-1:] == ["Running"])
        operator.inject("j1-master-0", behaviors.node_lost())
        pod = _until(
            lambda: (
                (p := core.read_namespaced_pod("j1-master-0", "default")).status.reason == "NodeLost" and p
            )
        )
        assert pod.status.phase == "Running"  # type: ignore[attr-defined]
        ready = next(c for c in pod.status.conditions if c.type == "Ready")  # type: ignore[attr-defined]
        assert (ready.status, ready.reason) == ("False", "NodeLost")
        node = core.read_node(pod.spec.node_name)  # type: ignore[attr-defined]
        assert [(c.type, c.status) for c in node.status.conditions] == [("Ready", "Unknown")]
        assert node.spec.taints[0].key == "node.kubernetes.io/unreachable"
        time.sleep(0.3)  # the operator had its chance to fail the job: it must not
        assert _true_conditions(custom, "j1")[-1] == "Running"
    finally:
        operator.stop()


def test_image_pull_failure(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    operator = _run_scripted(kube, custom, behaviors.image_pull_failure())
    try:
        pod = _until(
            lambda: (p := core.read_namespaced_pod("j1-master-0", "default")).status.container_statuses and p
        )
        waiting = pod.status.container_statuses[0].state.waiting  # type: ignore[attr-defined]
        assert pod.status.phase == "Pending" and waiting.reason == "ImagePullBackOff"  # type: ignore[attr-defined]
        with pytest.raises(client.ApiException) as info:
            core.read_namespaced_pod_log("j1-master-0", "default")
        assert info.value.status == 400
        assert "is waiting to start: ImagePullBackOff" in json.loads(info.value.body)["message"]
    finally:
        operator.stop()


def test_crash_loop_backoff(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    operator = _run_scripted(kube, custom, behaviors.crash_loop(every=0.05), policy="OnFailure")
    try:
        status = _until(
            lambda: (
                (s := core.read_namespaced_pod("j1-master-0", "default").status.container_statuses)
                and s[0].restart_count >= 2
                and s[0]
            )
        )
        assert status.state.waiting.reason == "CrashLoopBackOff"  # type: ignore[attr-defined]
        assert status.last_state.terminated.exit_code == 1  # type: ignore[attr-defined]
    finally:
        operator.stop()


def test_unschedulable(kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    operator = _run_scripted(kube, custom, behaviors.unschedulable())
    try:
        pod = _until(
            lambda: (p := core.read_namespaced_pod("j1-master-0", "default")).status.conditions and p
        )
        scheduled = pod.status.conditions[0]  # type: ignore[attr-defined]
        assert (scheduled.type, scheduled.status, scheduled.reason) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        )
        assert "Insufficient nvidia.com/gpu" in scheduled.message
        assert pod.status.phase == "Pending"  # type: ignore[attr-defined]
        events = core.list_namespaced_event("default", field_selector="involvedObject.name=j1-master-0").items
        assert "FailedScheduling" in {e.reason for e in events}
    finally:
        operator.stop()


def test_hang_runs_forever_without_logs(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    operator = _run_scripted(kube, custom, behaviors.hang())
    try:
        wait_for_phase(core, "j1-master-0", "Running")
        time.sleep(0.8)  # longer than the default duration (0.5)
        assert core.read_namespaced_pod("j1-master-0", "default").status.phase == "Running"
        assert core.read_namespaced_pod_log("j1-master-0", "default") == ""
    finally:
        operator.stop()


def test_missing_secret_is_create_container_config_error(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    env = [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    with FakeTrainingOperator(kube, duration=0.2):
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1", env=env))
        status = _until(
            lambda: (
                (s := core.read_namespaced_pod("j1-master-0", "default").status.container_statuses) and s[0]
            )
        )
    waiting = status.state.waiting  # type: ignore[attr-defined]
    assert waiting.reason == "CreateContainerConfigError" and waiting.message == 'secret "absent" not found'


def test_inject_eviction_into_a_live_pod(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    with FakeTrainingOperator(kube, duration=60) as operator:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, pytorchjob("j1", policy="Never")
        )
        wait_for_phase(core, "j1-master-0", "Running")
        operator.inject("j1-master-0", behaviors.evicted())
        operator.wait_for_job("j1", "Failed")
    assert core.read_namespaced_pod("j1-master-0", "default").status.reason == "Evicted"


def test_plain_pods_are_left_alone(kube: FakeKubernetes, core: client.CoreV1Api) -> None:
    with FakeTrainingOperator(kube, duration=0.05):
        core.create_namespaced_pod("default", pod_body("standalone"))
        time.sleep(0.2)
    assert core.read_namespaced_pod("standalone", "default").status.phase == "Pending"


def test_inject_oom_into_an_executing_pod(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    script = "import time; print('training', flush=True); time.sleep(60)"
    with FakeTrainingOperator(kube, mode="execute", kill_grace=1.0) as operator:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, pytorchjob("j1", ["python", "-c", script], policy="Never")
        )
        wait_for_phase(core, "j1-master-0", "Running")
        _until(lambda: "training" in core.read_namespaced_pod_log("j1-master-0", "default"))
        operator.inject("j1-master-0", behaviors.oom_killed())
        operator.wait_for_job("j1", "Failed")
        with pytest.raises(ValueError):
            operator.inject("j1-master-0", behaviors.run())
    terminated = (
        core.read_namespaced_pod("j1-master-0", "default").status.container_statuses[0].state.terminated
    )
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)
