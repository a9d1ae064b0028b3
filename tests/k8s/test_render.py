"""`python -m sailk8s render`: the exact manifest, validated, and ZERO writes to any API or store;
plus `kubectl get pytorchjobs -l sail.io/run=R` against the fake cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sailk8s.backends.kubernetes.backend import KubernetesBackend
from sailk8s.spec import load_pipeline
from sailk8s.testing.apiserver import FakeKubernetes

REPO = Path(__file__).resolve().parents[2]
PIPELINE = """\
run: r1
backend: kubernetes
store: file://{store}
namespace: sail
image: registry.example.com/sail/sail-train:0.1.0
stages:
  - name: recaption
    kind: caption
    config: {{model: models/captioner}}
    outputs: [data/recaptioned]
    resources: {{nodes: 2, gpus_per_node: 8, cpu: "32", memory: 256Gi}}
    scheduling: {{gang: true, kueue_queue: gpu-batch}}
"""


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(namespaces=("sail",)) as k:
        yield k


@pytest.fixture
def setup(tmp_path: Path, kube: FakeKubernetes) -> tuple[Path, dict[str, str]]:
    store = tmp_path / "store"
    (store / "runs" / "r1").mkdir(parents=True)
    (store / "runs" / "r1" / "state.json").write_text("{}")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(store=store))
    env = {
        **os.environ,
        "KUBECONFIG": str(kube.kubeconfig(tmp_path / "kubeconfig")),
        "SAIL_STORE_ENDPOINT": "http://minio.sail:9000",
        "SAIL_STORE_SECRET_KEY": "do-not-print-me",
    }
    return pipeline, env


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
    }


def _render(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sailk8s", "render", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_render_prints_the_exact_manifest_and_writes_nothing(
    setup: tuple[Path, dict[str, str]], kube: FakeKubernetes, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, env = setup
    store = pipeline.parent / "store"
    before = _tree(store)
    res = _render("recaption", "-f", str(pipeline), "--attempt", "3", env=env)
    assert res.returncode == 0, res.stderr
    assert kube.requests == []  # not one HTTP request reached the API server
    assert _tree(store) == before  # and the store is untouched
    assert "do-not-print-me" not in res.stdout + res.stderr
    manifest = yaml.safe_load(res.stdout)
    monkeypatch.setenv("SAIL_STORE_ENDPOINT", "http://minio.sail:9000")
    backend = KubernetesBackend(configuration=kube.client_configuration(), namespace="sail")
    p = load_pipeline(pipeline)
    assert manifest == backend.manifest(p, p.stage("recaption"), 3)  # what submit would send
    assert "valid (" in res.stderr and "kubectl get pytorchjobs -n sail -l sail.io/run=r1" in res.stderr
    if (REPO.parent / "shared" / "crds" / "kubeflow.org_pytorchjobs.yaml").is_file():
        assert "valid (CRD schema (" in res.stderr  # found beside the repository


def test_render_errors_are_one_line(setup: tuple[Path, dict[str, str]]) -> None:
    pipeline, env = setup
    res = _render("nope", "-f", str(pipeline), env=env)
    assert res.returncode == 3 and res.stderr.strip().startswith("error: no stage named 'nope'")
    assert "Traceback" not in res.stderr
    res = _render("recaption", "-f", str(pipeline.parent / "missing.yaml"), env=env)
    assert res.returncode == 3 and "no such pipeline file" in res.stderr


def test_kubectl_get_by_run_label(kube: FakeKubernetes, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    if not Path(kubectl).exists():
        pytest.skip("kubectl not installed")
    from k8s_pipelines import make_pipeline

    backend = KubernetesBackend(configuration=kube.client_configuration(), namespace="sail", retry_seconds=3)
    p = make_pipeline()
    for stage in ("ingest", "recaption"):
        backend.submit(p, p.stage(stage), 1)
    other = make_pipeline(run="r2")
    backend.submit(other, other.stage("ingest"), 1)
    config = kube.kubeconfig(tmp_path / "kc", namespace="sail")
    res = subprocess.run(
        [kubectl, "--kubeconfig", str(config), "get", "pytorchjobs", "-l", "sail.io/run=r1", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.split()) == [
        "pytorchjob.kubeflow.org/r1-ingest-1",
        "pytorchjob.kubeflow.org/r1-recaption-1",
    ]


def test_render_a_trainjob_of_the_cluster_example(tmp_path: Path) -> None:
    """examples/cluster.yaml with kubernetes.job_api trainjob: a TrainJob a v2.3 cluster accepts."""
    crds = REPO.parent / "shared" / "crds" / "trainer-v2"
    if not crds.is_dir():
        pytest.skip(f"Trainer v2 CRDs not found at {crds}")
    from sailk8s.backends.kubernetes.jobapi import reference_runtime
    from sailk8s.backends.kubernetes.trainvalidation import validate_runtime, validate_trainjob

    example = yaml.safe_load((REPO / "examples" / "cluster.yaml").read_text())
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({**example, "kubernetes": {"job_api": "trainjob"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIL_")}
    res = _render("pretrain", "-f", str(path), env={**env, "KUBECONFIG": str(tmp_path / "none")})
    assert res.returncode == 0, res.stderr
    job = yaml.safe_load(res.stdout)
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["name"] == "sail-vl-2b-pretrain-1"
    assert job["spec"]["trainer"]["numNodes"] == 16 and job["spec"]["trainer"]["numProcPerNode"] == 8
    assert f"valid (CRD schema ({crds}/trainer.kubeflow.org_trainjobs.yaml) and webhook rules)" in res.stderr
    assert "# note: stages.pretrain.resources.priority_class" in res.stderr
    assert "kubectl get trainjobs -n sail -l sail.io/run=sail-vl-2b" in res.stderr
    runtime = reference_runtime(load_pipeline(path), job)
    assert runtime is not None and validate_runtime(runtime, crds) and validate_trainjob(job, runtime, crds)
