"""Fixtures for the Kubernetes backend tests: pipelines built in code, a fake cluster, a file store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakecluster import ClusterDriver
from k8s_pipelines import make_pipeline

from sailk8s.spec import Pipeline
from sailk8s.store import open_store
from sailk8s.store.base import ObjectStore
from sailk8s.testing.apiserver import FakeKubernetes

CRD = Path(__file__).resolve().parents[3] / "shared" / "crds" / "kubeflow.org_pytorchjobs.yaml"


@pytest.fixture
def pipeline() -> Pipeline:
    return make_pipeline()


@pytest.fixture
def crd_path() -> Path:
    if not CRD.is_file():
        pytest.skip(f"PyTorchJob CRD not found at {CRD}")
    pytest.importorskip("jsonschema")
    return CRD


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    """A fake API server with the `sail` namespace."""
    with FakeKubernetes(namespaces=("sail",)) as k:
        yield k


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    (tmp_path / "store").mkdir()
    return open_store(f"file://{tmp_path / 'store'}")


@pytest.fixture
def cluster(kube: FakeKubernetes) -> ClusterDriver:
    return ClusterDriver(kube)


TRAINER_CRDS = CRD.parent / "trainer-v2"


@pytest.fixture
def trainer_crds() -> Path:
    """The Trainer v2.3 CRD folder (TrainJob, ClusterTrainingRuntime, TrainingRuntime, runtimes/)."""
    if not (TRAINER_CRDS / "trainer.kubeflow.org_trainjobs.yaml").is_file():
        pytest.skip(f"Trainer v2 CRDs not found at {TRAINER_CRDS}")
    pytest.importorskip("jsonschema")
    return TRAINER_CRDS
