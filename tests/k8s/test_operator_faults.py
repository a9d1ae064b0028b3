"""Each failure class end to end: the simulated training operator plays a pod fault, the backend's
wait() (watches, real client, real HTTP) reports the phase, failure class and reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from k8s_pipelines import make_pipeline

from sailk8s.backends.base import Phase
from sailk8s.backends.kubernetes.backend import KubernetesBackend
from sailk8s.exitcodes import FailureClass
from sailk8s.testing import behaviors as bh
from sailk8s.testing.apiserver import FakeKubernetes
from sailk8s.testing.clock import SimulatedClock
from sailk8s.testing.operator import FakeTrainingOperator

SPEED = 60.0  # one simulated minute per real second


@pytest.fixture
def cluster() -> Iterator[tuple[FakeKubernetes, FakeTrainingOperator]]:
    with (
        FakeKubernetes(namespaces=("sail",), clock=SimulatedClock(speed=SPEED)) as kube,
        FakeTrainingOperator(kube, mode="simulate", duration=30.0) as operator,
    ):
        kube.state.create(
            kube.type("secrets"),
            "sail",
            {
                "metadata": {"name": "sail-store-credentials"},
                "data": {"SAIL_STORE_ACCESS_KEY": "YQ==", "SAIL_STORE_SECRET_KEY": "Yg=="},
            },
        )
        yield kube, operator


CASES = {
    "success": (None, Phase.SUCCEEDED, None, "Succeeded"),
    "app-error": (bh.fail(1, after=5), Phase.FAILED, FailureClass.APP, "ExitCode"),
    "bad-config": (bh.fail(3, after=5), Phase.FAILED, FailureClass.PERMANENT, "ExitCode"),
    "evicted": (bh.evicted(after=5), Phase.FAILED, FailureClass.INFRA, "Evicted"),
    "preempted": (bh.preempted(after=5), Phase.FAILED, FailureClass.INFRA, "Preempted"),
    "node-lost": (bh.node_lost(after=5), Phase.FAILED, FailureClass.INFRA, "NodeLost"),
    "oom": (bh.oom_killed(after=5), Phase.FAILED, FailureClass.APP, "OOMKilled"),
    "image-pull": (bh.image_pull_failure(), Phase.FAILED, FailureClass.PERMANENT, "ImagePullBackOff"),
    "crash-loop": (bh.crash_loop(1, every=5), Phase.FAILED, FailureClass.APP, "CrashLoopBackOff"),
    "unschedulable": (bh.unschedulable(), Phase.FAILED, FailureClass.INFRA, "Unschedulable"),
}
# Where the fault plays: a worker, except where the master's success would end the job first.
TARGET = {"unschedulable": ("master", 0)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_failure_class_through_the_operator(
    cluster: tuple[FakeKubernetes, FakeTrainingOperator], case: str
) -> None:
    kube, operator = cluster
    behavior, phase, failure, reason = CASES[case]
    if behavior is not None:
        replica, index = TARGET.get(case, ("worker", 1))
        operator.script(behavior, job="r1-recaption-*", replica=replica, index=index)
        if replica != "master":  # the master never ends on its own: only the fault can end the job
            operator.script(bh.hang(), job="r1-recaption-*", replica="master")
    backend = KubernetesBackend(
        configuration=kube.client_configuration(),
        namespace="sail",
        retry_seconds=3,
        unschedulable_after=120,
        recheck_seconds=0.2,
        clock=kube.clock.now,
    )
    p = make_pipeline()
    ref = backend.submit(p, p.stage("recaption"), 1)
    st = backend.wait(ref, timeout=300)  # a hang guard: wait() returns when the job ends
    assert (st.phase, st.failure, st.reason) == (phase, failure, reason), st
    if phase == Phase.FAILED and reason not in ("ExitCode",):
        assert "-".join(map(str, TARGET.get(case, ("worker", 1)))) in (st.message or "")
    assert operator.errors == []


def test_missing_store_secret_is_permanent() -> None:
    with FakeKubernetes(namespaces=("sail",)) as kube, FakeTrainingOperator(kube, duration=1.0):
        backend = KubernetesBackend(
            configuration=kube.client_configuration(), namespace="sail", retry_seconds=3
        )
        p = make_pipeline()
        st = backend.wait(backend.submit(p, p.stage("ingest"), 1), timeout=300)
        assert (st.phase, st.failure, st.reason) == (
            Phase.FAILED,
            FailureClass.PERMANENT,
            "CreateContainerConfigError",
        )
        assert "sail-store-credentials" in (st.message or "")
