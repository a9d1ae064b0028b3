"""The same controller on the Kubernetes backend: the fake API server and simulated operator."""

from __future__ import annotations

from pathlib import Path

import pytest

from sailk8s.backends.kubernetes.backend import KubernetesBackend
from sailk8s.backends.kubernetes.trainruntime import build_training_runtime
from sailk8s.controller import Controller
from sailk8s.ledger.runstate import load_state
from sailk8s.spec import parse_pipeline
from sailk8s.store.local import LocalStore
from sailk8s.testing import FakeKubernetes, FakeTrainingOperator, behaviors

RETRY = {"max_attempts": 3, "backoff_base_seconds": 5, "max_infra_retries": 3}


@pytest.mark.slow
@pytest.mark.parametrize("job_api", ["pytorchjob", "trainjob"])
def test_failure_classes_on_the_fake_cluster(tmp_path: Path, job_api: str) -> None:
    store = LocalStore(tmp_path / "store", durable=False)
    pipeline = parse_pipeline({
        "run": "r1", "backend": "kubernetes", "store": store.uri, "namespace": "sail", "store_secret": None,
        "kubernetes": {"job_api": job_api},
        "stages": [
            {"name": "a", "kind": "ingest", "outputs": ["data/a"], "retry": RETRY},
            {"name": "b", "kind": "filter", "depends": ["a"], "retry": RETRY},
            {"name": "c", "kind": "filter", "retry": RETRY},
            {"name": "d", "kind": "filter", "depends": ["c"], "retry": RETRY},
        ]})
    sleeps: list[float] = []
    with FakeKubernetes(namespaces=("sail",)) as kube, \
            FakeTrainingOperator(kube, mode="simulate", duration=0.3) as operator:
        kube.install_runtime(build_training_runtime(image=pipeline.image, store_secret=None))
        operator.script(behaviors.evicted(), job="r1-a-1")  # infra: retried, not an app failure
        operator.script(behaviors.fail(exit_code=1), job="r1-b-1")  # app: retried with backoff
        operator.script(behaviors.image_pull_failure(), job="r1-c-1")  # permanent: stop at once
        backend = KubernetesBackend.for_pipeline(pipeline, configuration=kube.client_configuration(),
                                                 store=store, retry_seconds=5)
        assert backend.kind == {"pytorchjob": "PyTorchJob", "trainjob": "TrainJob"}[job_api]
        ctl = Controller(pipeline, backend, store, tick=2.0, sleep=sleeps.append, lease_seconds=15)
        state = ctl.run()
        assert operator.errors == []
        leases, _ = kube.state.list(kube.type("leases", "coordination.k8s.io"), "sail")
        jobs, _ = kube.state.list(kube.type(backend.api.resource.plural, backend.api.resource.group), "sail")
    assert {j["metadata"]["name"] for j in jobs} >= {"r1-a-2", "r1-b-2"}  # the chosen API ran them
    a, b, c, d = (state.stages[n] for n in "abcd")
    assert (a.state, a.infra_failures, a.app_failures, len(a.attempts)) == ("succeeded", 1, 0, 2)
    assert a.attempts[0].failure == "infra" and a.attempts[0].reason == "Evicted"
    assert (b.state, b.app_failures, len(b.attempts)) == ("succeeded", 1, 2)
    assert c.state == "failed" and len(c.attempts) == 1 and "permanent" in (c.cause or "")
    assert "ImagePull" in (c.cause or "")
    assert d.state == "blocked" and not d.attempts
    # One 5-second backoff each for a (infra) and b (app), slept in tick-sized (2 s) pieces.
    assert sum(sleeps) == 10.0 and max(sleeps) <= 2.0
    saved = load_state(store, "r1")
    assert saved is not None and saved.backend == "kubernetes" and saved.status == "failed"
    # The run's Lease was taken (one controller) and given up at the end.
    assert len(leases) == 1 and not leases[0].get("spec", {}).get("holderIdentity")
