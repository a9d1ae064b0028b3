"""A run has an identity: after the store is wiped, a run of the same name does the work again.

Before run ids, the local backend keyed attempt records by store URI and run name, and a
PyTorchJob `<run>-<stage>-<attempt>` of an earlier run was adopted by name: the second run
"succeeded" in a second and wrote nothing.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sailk8s.backends.base import Backend
from sailk8s.backends.kubernetes.backend import KubernetesBackend
from sailk8s.backends.kubernetes.manifest import LABEL_RUN_ID
from sailk8s.backends.local.backend import LocalBackend
from sailk8s.controller import Controller
from sailk8s.envcontract import CREDENTIAL_VARS
from sailk8s.ledger.runstate import RunState
from sailk8s.spec import Pipeline, parse_pipeline
from sailk8s.store.base import ObjectStore
from sailk8s.store.local import LocalStore
from sailk8s.testing import FakeKubernetes, FakeTrainingOperator
from sailk8s.testing.executor import default_rewrite
from sailk8s.testing.s3 import S3Server, s3_server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def two_stages(uri: str, backend: str = "local") -> Pipeline:
    extra = {"namespace": "sail", "store_secret": "sail-store"} if backend == "kubernetes" else {}
    return parse_pipeline({"run": "r1", "backend": backend, "store": uri, **extra, "stages": [
        {"name": "a", "kind": "ingest", "outputs": ["data/a"]},
        {"name": "b", "kind": "filter", "depends": ["a"], "inputs": ["data/a"], "outputs": ["data/b"]}]})


Outcome = tuple[RunState, dict[str, bytes]]


def run_once(pipeline: Pipeline, backend: Backend, store: ObjectStore) -> Outcome:
    """Run the pipeline; its state and every output object."""
    state = Controller(pipeline, backend, store, tick=0.2).run()
    outputs = {k: store.get(k) for prefix in ("data/a/", "data/b/") for k in store.list(prefix)}
    return state, outputs


def assert_done_again(first: Outcome, second: Outcome) -> None:
    (s1, out1), (s2, out2) = first, second
    assert s1.status == "succeeded" and s2.status == "succeeded"
    assert s1.run_id and s2.run_id and s1.run_id != s2.run_id  # a new run in the wiped store
    assert [len(s2.stages[n].attempts) for n in "ab"] == [1, 1]  # each stage ran, none was "adopted"
    assert len(out1) == 6 and out2 == out1  # the same work, done again


def test_wiped_file_store_runs_again(local_env: dict[str, Path]) -> None:
    store = LocalStore(local_env["store"], durable=False)
    pipeline = two_stages(store.uri)
    first = run_once(pipeline, LocalBackend(store), store)
    shutil.rmtree(local_env["store"])  # `rm -rf` the store: the local attempt records stay
    store = LocalStore(local_env["store"], durable=False)
    assert_done_again(first, run_once(pipeline, LocalBackend(store), store))


@pytest.fixture
def s3_env(local_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A moto server the workloads reach through SAIL_STORE_* (as pods do)."""
    with s3_server() as s3:
        for var, value in {"SAIL_STORE_ENDPOINT": s3.endpoint, "SAIL_STORE_ACCESS_KEY": s3.access_key,
                           "SAIL_STORE_SECRET_KEY": s3.secret_key, "SAIL_STORE_REGION": s3.region}.items():
            monkeypatch.setenv(var, value)
        yield s3


@pytest.mark.slow
def test_fresh_bucket_of_the_same_name_runs_again(s3_env: S3Server) -> None:
    store = s3_env.store("sail")
    pipeline = two_stages(s3_env.uri("sail"))
    first = run_once(pipeline, LocalBackend(store), store)
    for key in list(store.list("")):  # a fresh bucket of the same name: nothing of the first run
        store.delete(key)
    assert_done_again(first, run_once(pipeline, LocalBackend(store), store))


def _ctljobs(argv: list[str]) -> list[str]:
    """The pod's `-m jobs.<kind>` workload becomes the fake `ctljobs.<kind>`; the launcher stays."""
    out = default_rewrite(argv)
    return [f"ctl{a}" if a.startswith("jobs.") and a != "jobs.launch" else a for a in out]


@pytest.fixture
def kube_cluster(local_env: dict[str, Path]) -> Iterator[Callable[[ObjectStore], KubernetesBackend]]:
    with FakeKubernetes(namespaces=("sail",)) as kube:
        data = {var: base64.b64encode(b"unused").decode() for var in CREDENTIAL_VARS}
        kube.state.create(kube.type("secrets"), "sail", {"metadata": {"name": "sail-store"}, "data": data})
        env = {"PYTHONPATH": f"{HERE}:{ROOT}", "CTL_FAKE": "{}", "OMP_NUM_THREADS": "1"}
        with FakeTrainingOperator(kube, mode="execute", cwd=str(ROOT), kill_grace=2.0, extra_env=env,
                                  rewrite=_ctljobs) as operator:
            yield lambda store: KubernetesBackend(configuration=kube.client_configuration(), namespace="sail",
                                                  store=store, retry_seconds=5)
            assert operator.errors == []
        assert kube.errors == []


@pytest.mark.slow
def test_old_finished_pytorchjob_of_the_same_name_is_not_adopted(
    local_env: dict[str, Path], kube_cluster: Callable[[ObjectStore], KubernetesBackend]
) -> None:
    store = LocalStore(local_env["store"], durable=False)
    pipeline = two_stages(store.uri, "kubernetes")
    backend = kube_cluster(store)
    first = run_once(pipeline, backend, store)
    job = backend.client.get_job("sail", "r1-a-1")
    assert job is not None and job["metadata"]["labels"][LABEL_RUN_ID] == first[0].run_id  # left finished
    shutil.rmtree(local_env["store"])
    store = LocalStore(local_env["store"], durable=False)
    second = run_once(pipeline, kube_cluster(store), store)
    assert_done_again(first, second)
    job = backend.client.get_job("sail", "r1-a-1")
    assert job is not None and job["metadata"]["labels"][LABEL_RUN_ID] == second[0].run_id  # replaced
