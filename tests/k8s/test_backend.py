"""KubernetesBackend through the fake API server with the real kubernetes client over HTTP."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fakecluster import ClusterDriver
from k8s_pipelines import make_pipeline

from sailk8s.backends.base import AttemptRef, Phase
from sailk8s.backends.kubernetes.backend import KubernetesBackend
from sailk8s.backends.kubernetes.manifest import ANNOTATION_SPEC_HASH
from sailk8s.errors import BackendError
from sailk8s.exitcodes import FailureClass
from sailk8s.spec import Pipeline
from sailk8s.store.base import ObjectStore
from sailk8s.testing import podstatus as ps
from sailk8s.testing import wait_for
from sailk8s.testing.apiserver import FakeKubernetes


@pytest.fixture
def backend(kube: FakeKubernetes, store: ObjectStore) -> KubernetesBackend:
    return KubernetesBackend(
        configuration=kube.client_configuration(),
        namespace="sail",
        store=store,
        retry_seconds=3.0,
        recheck_seconds=0.2,
    )


def submit(
    backend: KubernetesBackend, pipeline: Pipeline, stage: str = "ingest", attempt: int = 1
) -> AttemptRef:
    return backend.submit(pipeline, pipeline.stage(stage), attempt)


# -- submit / adopt ---------------------------------------------------------------------------


def test_submit_creates_the_rendered_job(
    backend: KubernetesBackend, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref = submit(backend, pipeline, "recaption", 2)
    assert ref == AttemptRef("r1", "recaption", 2) and ref.name == "r1-recaption-2"
    stored = cluster.job("r1-recaption-2")
    assert stored is not None
    want = backend.manifest(pipeline, pipeline.stage("recaption"), 2)
    assert stored["spec"] == want["spec"]
    assert stored["metadata"]["labels"] == want["metadata"]["labels"]
    assert backend.status(ref).phase == Phase.PENDING


def test_resubmit_adopts_a_matching_job(
    backend: KubernetesBackend, kube: FakeKubernetes, pipeline: Pipeline
) -> None:
    submit(backend, pipeline)
    other = KubernetesBackend(configuration=kube.client_configuration(), namespace="sail", retry_seconds=3)
    ref = submit(other, pipeline)  # a restarted controller: 409 -> same spec hash -> adopt
    assert other.status(ref).phase == Phase.PENDING
    assert kube.request_count(method="POST", path_contains="pytorchjobs") == 2


def test_resubmit_with_a_different_spec_fails_clearly(backend: KubernetesBackend, pipeline: Pipeline) -> None:
    submit(backend, pipeline)
    changed = make_pipeline(image="registry.example.com/sail/other:2")
    with pytest.raises(
        BackendError,
        match=r"already exists in namespace 'sail' with a different spec .*"
        r"kubectl delete pytorchjob r1-ingest-1 -n sail",
    ):
        submit(backend, changed)


def test_conflict_race_with_a_vanished_job_creates_it(
    backend: KubernetesBackend, kube: FakeKubernetes, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    kube.faults.conflict_on_create(path="pytorchjobs")  # 409, yet no such job exists
    submit(backend, pipeline)
    job = cluster.job("r1-ingest-1")
    assert job is not None and ANNOTATION_SPEC_HASH in job["metadata"]["annotations"]


def test_transient_errors_are_retried(
    backend: KubernetesBackend, kube: FakeKubernetes, pipeline: Pipeline
) -> None:
    kube.faults.fail(503, times=2, path="pytorchjobs")
    kube.faults.throttle(times=1, path="pytorchjobs", retry_after=0)
    ref = submit(backend, pipeline)
    assert backend.status(ref).phase == Phase.PENDING


def test_persistent_5xx_gives_up_in_bounded_time(kube: FakeKubernetes, pipeline: Pipeline) -> None:
    b = KubernetesBackend(configuration=kube.client_configuration(), namespace="sail", retry_seconds=1.0)
    kube.faults.fail(500, times=None, path="pytorchjobs")
    start = time.monotonic()
    with pytest.raises(
        BackendError, match=r"kept failing on create pytorchjobs.kubeflow.org .*500.*gave up after"
    ):
        submit(b, pipeline)
    assert time.monotonic() - start < 30  # retry_seconds is 1: bounded, with room for a busy machine


# -- status: every failure mapping through the real client ------------------------------------

SCENARIOS = {
    "evicted": (
        lambda p: ps.terminated(
            p,
            T(),
            T(),
            137,
            "Error",
            pod_reason="Evicted",
            pod_message="The node was low on resource: memory.",
        ),
        "Evicted",
        FailureClass.INFRA,
    ),
    "preempted": (
        lambda p: ps.terminated(p, T(), T(), 143, "Error", disruption=("PreemptionByScheduler", "preempted")),
        "Preempted",
        FailureClass.INFRA,
    ),
    "node-lost": (
        lambda p: ps.node_lost(ps.running(p, T(), T(), "10.0.0.9"), T(), "gpu-node-0", p["metadata"]["name"]),
        "NodeLost",
        FailureClass.INFRA,
    ),
    "oom": (lambda p: ps.terminated(p, T(), T(), 137, "OOMKilled"), "OOMKilled", FailureClass.APP),
    "image": (
        lambda p: ps.waiting(p, T(), "gpu-node-0", "ImagePullBackOff", "pull access denied"),
        "ImagePullBackOff",
        FailureClass.PERMANENT,
    ),
    "crashloop": (
        lambda p: ps.crash_loop(p, T(), T(), "10.0.0.9", 3, 1),
        "CrashLoopBackOff",
        FailureClass.APP,
    ),
    "unschedulable": (
        lambda p: ps.unschedulable(p, T(), "0/4 nodes are available: Insufficient nvidia.com/gpu"),
        "Unschedulable",
        FailureClass.INFRA,
    ),
}


def T() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pod_failures_map_to_phase_and_class(
    kube: FakeKubernetes, store: ObjectStore, cluster: ClusterDriver, pipeline: Pipeline, scenario: str
) -> None:
    b = KubernetesBackend(
        configuration=kube.client_configuration(),
        namespace="sail",
        store=store,
        retry_seconds=3,
        unschedulable_after=1.0,
    )
    make_status, reason, failure = SCENARIOS[scenario]
    ref = submit(b, pipeline, "recaption")
    cluster.set_conditions(ref.name, "Created", "Running")
    cluster.add_pod(ref.name, "master", 0, lambda p: ps.running(p, T(), T(), "10.0.0.1"))
    bad = cluster.add_pod(ref.name, "worker", 1, make_status)
    st = b.status(ref)
    assert (st.phase, st.reason, st.failure) == (Phase.FAILED, reason, failure), st
    assert bad in (st.message or "")


@pytest.mark.parametrize(
    "code, failure", [(1, FailureClass.APP), (3, FailureClass.PERMANENT), (143, FailureClass.INFRA)]
)
def test_failed_job_classified_by_exit_code(
    backend: KubernetesBackend, cluster: ClusterDriver, pipeline: Pipeline, code: int, failure: FailureClass
) -> None:
    ref = submit(backend, pipeline)
    cluster.add_pod(ref.name, "master", 0, lambda p: ps.terminated(p, T(), T(), code, "Error"))
    cluster.set_conditions(ref.name, "Created", "Failed")
    st = backend.status(ref)
    assert (st.phase, st.failure, st.exit_code) == (Phase.FAILED, failure, code)


def test_unknown_attempt(backend: KubernetesBackend) -> None:
    st = backend.status(AttemptRef("r1", "ingest", 9))
    assert st.phase == Phase.UNKNOWN and "r1-ingest-9" in (st.message or "")


# -- wait: watches, not polling ---------------------------------------------------------------


def _later(delay: float, fn) -> threading.Thread:  # type: ignore[no-untyped-def]
    t = threading.Thread(target=lambda: (time.sleep(delay), fn()), daemon=True)
    t.start()
    return t


def _run_two_ranks(cluster: ClusterDriver, job: str, log0: str, log1: str) -> None:
    """Play a 2-node attempt that runs, logs and succeeds."""
    cluster.set_conditions(job, "Created")
    master = cluster.add_pod(job, "master", 0, lambda p: ps.running(p, T(), T(), "10.0.0.1"))
    worker = cluster.add_pod(job, "worker", 0, lambda p: ps.running(p, T(), T(), "10.0.0.2"))
    cluster.set_conditions(job, "Created", "Running")
    cluster.write_log(master, log0)
    cluster.write_log(worker, log1)
    for pod in (master, worker):
        cluster.set_pod_status(pod, ps.terminated(cluster.pod(pod), T(), T(), 0, "Completed"))
    cluster.set_conditions(job, "Created", "Running", "Succeeded")


def test_wait_follows_a_job_to_success_and_archives_logs(
    backend: KubernetesBackend,
    kube: FakeKubernetes,
    cluster: ClusterDriver,
    store: ObjectStore,
    pipeline: Pipeline,
) -> None:
    ref = submit(backend, pipeline, "recaption")

    kube.clear_requests()
    _later(0.3, lambda: _run_two_ranks(cluster, ref.name, "rank0 step 1\nrank0 done\n", "rank1 step 1\n"))
    st = backend.wait(ref, timeout=120)
    assert st.phase == Phase.SUCCEEDED
    # Two lists + two watches (+ pod list and log reads for the archive): a constant, not a poll.
    assert kube.request_count(method="GET", path_contains="pytorchjobs") <= 3
    assert store.get("runs/r1/recaption/attempts/1/logs/rank-0.log") == b"rank0 step 1\nrank0 done\n"
    assert not [t for t in threading.enumerate() if t.name.startswith("watch-")]  # watches closed
    assert store.get("runs/r1/recaption/attempts/1/logs/rank-1.log") == b"rank1 step 1\n"


def test_wait_archives_every_rank_when_the_pod_watch_runs_behind(
    backend: KubernetesBackend,
    kube: FakeKubernetes,
    cluster: ClusterDriver,
    store: ObjectStore,
    pipeline: Pipeline,
) -> None:
    """The job's Succeeded can arrive before the pod watch has delivered the pods: the archive
    must still hold every rank's log (CI once lost rank 1's this way)."""
    ref = submit(backend, pipeline, "recaption")
    kube.faults.lag_watch(2.0, path="pods")
    _later(0.3, lambda: _run_two_ranks(cluster, ref.name, "rank0 done\n", "rank1 done\n"))
    assert backend.wait(ref, timeout=120).phase == Phase.SUCCEEDED
    assert store.get("runs/r1/recaption/attempts/1/logs/rank-0.log") == b"rank0 done\n"
    assert store.get("runs/r1/recaption/attempts/1/logs/rank-1.log") == b"rank1 done\n"


def test_wait_survives_watch_drops_and_410(
    backend: KubernetesBackend, kube: FakeKubernetes, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref = submit(backend, pipeline)
    kube.faults.expire_watch(times=1, path="pytorchjobs")  # the job watch gets 410 Gone: list again
    kube.faults.drop_watch(times=2, path="pods")  # the pod watch is cut twice: resume from its RV

    def run_job() -> None:
        cluster.set_conditions(ref.name, "Created", "Running")
        wait_for(lambda: kube.open_watches() >= 2, what="the job and pod watches to be open")
        kube.close_watches()  # an API server restart ends every stream cleanly
        time.sleep(0.3)
        cluster.set_conditions(ref.name, "Created", "Running", "Succeeded")

    kube.clear_requests()
    _later(0.3, run_job)
    assert backend.wait(ref, timeout=120).phase == Phase.SUCCEEDED
    assert kube.request_count(method="GET", path_contains="pytorchjobs", watch=False) == 2  # re-listed once
    # The first list and the final settling list; a drop resumed from its RV adds no re-list.
    assert kube.request_count(method="GET", path_contains="pods", watch=False) == 2
    assert kube.request_count(method="GET", path_contains="pods", watch=True) >= 3


def test_wait_timeout_returns_current_status(
    backend: KubernetesBackend, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref = submit(backend, pipeline)
    cluster.set_conditions(ref.name, "Created", "Running")
    start = time.monotonic()
    st = backend.wait(ref, timeout=0.5)
    assert st.phase == Phase.RUNNING and time.monotonic() - start < 30  # the job never ends: no hang


def test_wait_ends_a_job_that_failed_on_pod_evidence(
    backend: KubernetesBackend, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref = submit(backend, pipeline, "recaption")
    cluster.set_conditions(ref.name, "Created")
    _later(
        0.3,
        lambda: cluster.add_pod(
            ref.name,
            "master",
            0,
            lambda p: ps.waiting(p, T(), "gpu-node-0", "ErrImagePull", "manifest unknown"),
        ),
    )
    st = backend.wait(ref, timeout=120)
    assert (st.phase, st.reason, st.failure) == (Phase.FAILED, "ErrImagePull", FailureClass.PERMANENT)
    assert cluster.job(ref.name) is None  # deleted: no half-started gang left holding GPUs


def test_wait_on_unschedulable_gang_uses_time_not_polling(
    kube: FakeKubernetes, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    b = KubernetesBackend(
        configuration=kube.client_configuration(),
        namespace="sail",
        retry_seconds=3,
        unschedulable_after=1.5,
        recheck_seconds=30,
    )
    ref = submit(b, pipeline, "recaption")
    cluster.set_conditions(ref.name, "Created")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cluster.add_pod(ref.name, "master", 0, lambda p: ps.unschedulable(p, now, "Insufficient nvidia.com/gpu"))
    start = time.monotonic()
    st = b.wait(ref, timeout=120)
    assert (st.reason, st.failure) == ("Unschedulable", FailureClass.INFRA)
    assert time.monotonic() - start < 25  # woke at the deadline (1.5 s), not at recheck_seconds (30 s)


def test_wait_reports_a_job_deleted_by_someone_else(
    backend: KubernetesBackend, kube: FakeKubernetes, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref = submit(backend, pipeline)
    cluster.set_conditions(ref.name, "Created", "Running")
    _later(0.3, lambda: kube.state.delete(cluster.jobs, "sail", ref.name))
    st = backend.wait(ref, timeout=120)
    assert (st.phase, st.reason) == (Phase.CANCELLED, "Deleted")


def test_wait_gives_up_when_the_api_goes_away(kube: FakeKubernetes, pipeline: Pipeline) -> None:
    b = KubernetesBackend(configuration=kube.client_configuration(), namespace="sail", retry_seconds=1.0)
    ref = submit(b, pipeline)
    kube.faults.fail(503, times=None, path="pytorchjobs")
    with pytest.raises(BackendError, match=r"kept failing on watch pytorchjobs.kubeflow.org .*503"):
        b.wait(ref, timeout=120)


# -- cancel and logs --------------------------------------------------------------------------


def test_cancel_deletes_foreground_and_archives(
    backend: KubernetesBackend,
    kube: FakeKubernetes,
    cluster: ClusterDriver,
    store: ObjectStore,
    pipeline: Pipeline,
) -> None:
    ref = submit(backend, pipeline)
    pod = cluster.add_pod(ref.name, "master", 0, lambda p: ps.running(p, T(), T(), "10.0.0.1"))
    cluster.write_log(pod, "working\n", close=False)
    events: list[tuple[str, list[str]]] = []
    kube.state.subscribe(lambda e: events.append((e.type, e.obj["metadata"].get("finalizers") or [])))
    backend.cancel(ref)
    assert ("MODIFIED", ["foregroundDeletion"]) in events  # propagationPolicy Foreground
    assert cluster.job(ref.name) is None
    assert kube.state.find(cluster.pods, "sail", pod) is None  # dependents collected
    assert any(r.method == "DELETE" and "r1-ingest-1" in r.path for r in kube.requests)
    assert backend.status(ref).phase == Phase.CANCELLED
    backend.cancel(ref)  # cancelling again is a no-op
    assert list(backend.logs(ref)) == ["working"]  # from the archive now


def test_logs_master_first_rank_filter_and_follow(
    backend: KubernetesBackend, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref = submit(backend, pipeline, "recaption")
    w = cluster.add_pod(ref.name, "worker", 0, lambda p: ps.running(p, T(), T(), "10.0.0.2"))
    m = cluster.add_pod(ref.name, "master", 0, lambda p: ps.running(p, T(), T(), "10.0.0.1"))
    cluster.write_log(w, "w line\n")
    cluster.write_log(m, "m line 1\nm line 2\n", close=False)
    assert list(backend.logs(ref)) == ["[rank 0] m line 1", "[rank 0] m line 2", "[rank 1] w line"]
    assert list(backend.logs(ref, rank=1)) == ["w line"]
    _later(
        0.3,
        lambda: (
            cluster.kube.logs.append("sail", m, "pytorch", b"m line 3\n", cluster.now()),
            cluster.kube.logs.close("sail", m, "pytorch"),
        ),
    )
    assert list(backend.logs(ref, follow=True)) == ["m line 1", "m line 2", "m line 3"]


def test_follow_waits_for_the_pod_to_start(
    backend: KubernetesBackend, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref = submit(backend, pipeline)

    def start() -> None:
        pod = cluster.add_pod(ref.name, "master", 0)  # Pending: not started yet
        time.sleep(0.2)
        cluster.set_pod_status(pod, ps.running(cluster.pod(pod), T(), T(), "10.0.0.1"))
        cluster.write_log(pod, "hello\nbye\n")

    _later(0.3, start)
    assert list(backend.logs(ref, follow=True)) == ["hello", "bye"]


def test_follow_reports_an_attempt_that_fails_before_starting(
    backend: KubernetesBackend, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref = submit(backend, pipeline)
    cluster.add_pod(ref.name, "master", 0, lambda p: ps.waiting(p, T(), "n", "ErrImagePull", "not found"))
    with pytest.raises(BackendError, match=r"r1-ingest-1 failed before rank 0 started: .*cannot be pulled"):
        list(backend.logs(ref, follow=True))


def test_logs_without_pods_or_archive_say_so(backend: KubernetesBackend, pipeline: Pipeline) -> None:
    ref = submit(backend, pipeline)
    with pytest.raises(
        BackendError, match=r"no logs for 'r1-ingest-1': its pods are gone and nothing is archived"
    ):
        list(backend.logs(ref))


# -- bad input: one clear message each --------------------------------------------------------


def test_no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(
        BackendError,
        match=r"no usable Kubernetes configuration \(kubeconfig .*missing\).*"
        r"point KUBECONFIG at your cluster's config",
    ):
        KubernetesBackend()


def test_kubeconfig_and_context_are_used(
    kube: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipeline: Pipeline
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path / "kc", context="lab")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("SAIL_KUBE_CONTEXT", "lab")
    b = KubernetesBackend.for_pipeline(pipeline, retry_seconds=3)
    assert b.namespace == "sail" and b.host == kube.url
    assert submit(b, pipeline).name == "r1-ingest-1"
    monkeypatch.setenv("SAIL_KUBE_CONTEXT", "nope")
    with pytest.raises(BackendError, match=r"context 'nope'"):
        KubernetesBackend()


def test_unreachable_api(pipeline: Pipeline) -> None:
    import socket

    from kubernetes.client import Configuration

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    b = KubernetesBackend(configuration=cfg, namespace="sail", retry_seconds=0.5)
    with pytest.raises(BackendError, match=rf"cannot reach the Kubernetes API at http://127.0.0.1:{port}"):
        submit(b, pipeline)


def test_forbidden_names_verb_resource_and_rbac(
    backend: KubernetesBackend, kube: FakeKubernetes, pipeline: Pipeline
) -> None:
    kube.faults.fail(
        403,
        times=1,
        method="POST",
        path="pytorchjobs",
        message='pytorchjobs.kubeflow.org is forbidden: User "alice" cannot create resource',
    )
    with pytest.raises(BackendError) as info:
        submit(backend, pipeline)
    msg = str(info.value)
    assert msg.startswith(
        "forbidden: cannot create pytorchjobs.kubeflow.org 'r1-ingest-1' in namespace 'sail'"
    )
    assert 'User "alice"' in msg and 'resources: ["pytorchjobs"], verbs: ["create"]' in msg


def test_namespace_missing(kube: FakeKubernetes, pipeline: Pipeline) -> None:
    b = KubernetesBackend(configuration=kube.client_configuration(), namespace="sail", retry_seconds=3)
    p = make_pipeline(namespace="nowhere")
    with pytest.raises(
        BackendError,
        match=r"namespace 'nowhere' does not exist: create it "
        r"\(kubectl create namespace nowhere\)",
    ):
        submit(b, p)


def test_crd_not_installed(backend: KubernetesBackend, kube: FakeKubernetes, pipeline: Pipeline) -> None:
    kube.crd_installed = False
    with pytest.raises(
        BackendError,
        match=r"install the Kubeflow Training Operator v1.9: kubectl apply "
        r"--server-side -k",
    ):
        submit(backend, pipeline)
    with pytest.raises(BackendError, match=r"install the Kubeflow Training Operator v1.9"):
        backend.status(AttemptRef("r1", "ingest", 1))
