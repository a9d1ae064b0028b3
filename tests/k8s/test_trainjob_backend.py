"""KubernetesBackend with kubernetes.job_api trainjob against the fake API server and fake Trainer:
the runtime checked before submit, Kueue suspension shown as such, status and logs from node pods."""

from __future__ import annotations

import pytest
from k8s_pipelines import make_pipeline

from sailk8s.backends.base import Phase
from sailk8s.backends.kubernetes.backend import KubernetesBackend
from sailk8s.backends.kubernetes.trainruntime import build_training_runtime
from sailk8s.errors import BackendError
from sailk8s.spec import Pipeline
from sailk8s.store.base import ObjectStore
from sailk8s.testing import FakeKubernetes, FakeTrainingOperator

TRAINJOBS = ("trainjobs", "trainer.kubeflow.org")


@pytest.fixture
def tj_pipeline() -> Pipeline:
    return make_pipeline(kubernetes={"job_api": "trainjob"}, store_secret=None)


@pytest.fixture
def backend(kube: FakeKubernetes, store: ObjectStore, tj_pipeline: Pipeline) -> KubernetesBackend:
    return KubernetesBackend.for_pipeline(
        tj_pipeline, configuration=kube.client_configuration(), store=store, retry_seconds=3
    )


def posted_trainjobs(kube: FakeKubernetes) -> int:
    return len([r for r in kube.requests if r.method == "POST" and r.path.endswith("/trainjobs")])


def test_a_missing_runtime_is_named_before_anything_is_created(
    backend: KubernetesBackend, kube: FakeKubernetes, tj_pipeline: Pipeline
) -> None:
    with pytest.raises(BackendError, match=r"ClusterTrainingRuntime 'sail-torch' not found: install it"):
        backend.submit(tj_pipeline, tj_pipeline.stage("ingest"), 1)
    assert posted_trainjobs(kube) == 0


def test_a_runtime_that_would_refuse_the_job_is_caught_before_submit(
    backend: KubernetesBackend, kube: FakeKubernetes, tj_pipeline: Pipeline
) -> None:
    runtime = build_training_runtime(image="img:1", store_secret=None)
    runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["name"] = "trainer"  # our patch names `node`
    kube.install_runtime(runtime)
    with pytest.raises(BackendError, match=r"replicated job \('node'\) that the runtime lacks"):
        backend.submit(tj_pipeline, tj_pipeline.stage("ingest"), 1)
    assert posted_trainjobs(kube) == 0


def test_suspended_by_kueue_then_admitted_then_succeeded_with_logs(
    backend: KubernetesBackend, kube: FakeKubernetes, tj_pipeline: Pipeline
) -> None:
    kube.install_runtime(build_training_runtime(image="img:1", store_secret=None))
    operator = FakeTrainingOperator(kube, duration=0.2)  # stepped by hand first: Kueue acts in between
    ref = backend.submit(tj_pipeline, tj_pipeline.stage("recaption"), 1, run_id="rid")
    assert backend.status(ref).reason == "Created"
    # Kueue suspends what it has not admitted yet (here by hand, as its webhook would).
    kube.state.mutate(
        kube.type(*TRAINJOBS), "sail", ref.name, lambda o: o["spec"].__setitem__("suspend", True)
    )
    operator.reconcile_once()
    st = backend.status(ref)
    assert (st.phase, st.reason, st.message) == (
        Phase.PENDING,
        "Suspended",
        "waiting for Kueue admission (queue gpu-batch)",
    )
    kube.state.mutate(
        kube.type(*TRAINJOBS), "sail", ref.name, lambda o: o["spec"].__setitem__("suspend", False)
    )
    with operator:
        final = backend.wait(ref, timeout=30)
        assert operator.errors == []
    assert final.phase == Phase.SUCCEEDED, final
    lines = list(backend.logs(ref))
    assert any("simulated master 0 started" in line for line in lines)  # rank 0's node pod, container node
    assert lines[0].startswith("[rank 0] ")  # 4 nodes: every rank, rank 0 first


def test_resubmit_adopts_the_same_trainjob(
    backend: KubernetesBackend, kube: FakeKubernetes, tj_pipeline: Pipeline
) -> None:
    kube.install_runtime(build_training_runtime(image="img:1", store_secret=None))
    first = backend.submit(tj_pipeline, tj_pipeline.stage("ingest"), 1, run_id="rid")
    again = backend.submit(tj_pipeline, tj_pipeline.stage("ingest"), 1, run_id="rid")
    assert first == again and posted_trainjobs(kube) == 2  # the second POST met 409 and adopted
    jobs, _ = kube.state.list(kube.type(*TRAINJOBS), "sail")
    assert [j["metadata"]["name"] for j in jobs] == ["r1-ingest-1"]


def test_a_cluster_without_the_trainer_says_what_to_install(
    backend: KubernetesBackend, kube: FakeKubernetes, tj_pipeline: Pipeline
) -> None:
    kube.registry.trainer_installed = False
    with pytest.raises(BackendError, match=r"TrainJob CRD .* not installed .* Kubeflow Trainer v2\.3"):
        backend.submit(tj_pipeline, tj_pipeline.stage("ingest"), 1)
    assert posted_trainjobs(kube) == 0
