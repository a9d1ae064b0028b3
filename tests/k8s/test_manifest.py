"""The pure PyTorchJob builder and its validation against the CRD schema and webhook rules."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
from k8s_pipelines import make_pipeline

from sailk8s.backends.kubernetes import validation
from sailk8s.backends.kubernetes.manifest import (
    ANNOTATION_SPEC_HASH,
    build_pytorchjob,
    kubectl_commands,
    replica_rank,
    spec_hash,
)
from sailk8s.backends.kubernetes.validation import ManifestInvalid, validate_manifest, webhook_errors
from sailk8s.errors import ConfigError
from sailk8s.spec import Pipeline

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def container(manifest: dict, rtype: str = "Master") -> dict:
    return manifest["spec"]["pytorchReplicaSpecs"][rtype]["template"]["spec"]["containers"][0]


def env_of(manifest: dict, rtype: str = "Master") -> dict[str, dict]:
    return {e["name"]: e for e in container(manifest, rtype)["env"]}


@pytest.mark.parametrize("stage", ["ingest", "recaption", "filter"])
def test_every_realistic_stage_passes_schema_and_webhook(
    pipeline: Pipeline, crd_path: Path, stage: str
) -> None:
    m = build_pytorchjob(pipeline, pipeline.stage(stage), 1, store_endpoint="http://minio.sail:9000")
    assert validate_manifest(m, crd_path) is True  # schema checked too
    assert webhook_errors(m) == []


def test_one_node_cpu_stage(pipeline: Pipeline) -> None:
    m = build_pytorchjob(pipeline, pipeline.stage("ingest"), 1)
    assert m["apiVersion"] == "kubeflow.org/v1" and m["kind"] == "PyTorchJob"
    assert m["metadata"]["name"] == "r1-ingest-1" and m["metadata"]["namespace"] == "sail"
    specs = m["spec"]["pytorchReplicaSpecs"]
    assert list(specs) == ["Master"] and specs["Master"]["replicas"] == 1
    assert specs["Master"]["restartPolicy"] == "ExitCode"
    assert m["spec"]["nprocPerNode"] == "2"  # procs_per_node without GPUs
    c = container(m)
    assert c["name"] == "pytorch"
    assert c["command"] == ["python", "-m", "jobs.launch", "--nproc-per-node=2", "--nnodes=1",
                            "-m", "jobs.ingest"]
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    pod = specs["Master"]["template"]["spec"]
    assert "tolerations" not in pod and "affinity" not in pod
    assert "schedulingPolicy" not in m["spec"]["runPolicy"]


def test_gpu_gang_stage_with_kueue(pipeline: Pipeline) -> None:
    m = build_pytorchjob(pipeline, pipeline.stage("recaption"), 3)
    specs = m["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    assert m["spec"]["nprocPerNode"] == "8"
    c = container(m, "Worker")
    assert c["image"] == "registry.example.com/sail/sail-caption:0.1.0"
    assert c["command"] == ["python", "-m", "jobs.launch", "--nproc-per-node=8", "--nnodes=4",
                            "-m", "jobs.caption"]
    assert c["resources"]["limits"] == {"memory": "512Gi", "nvidia.com/gpu": "8"}
    assert c["resources"]["requests"] == {"cpu": "64", "memory": "512Gi"}
    assert c["volumeMounts"] == [{"mountPath": "/dev/shm", "name": "dshm"}]
    pod = specs["Worker"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["priorityClassName"] == "training-high"
    pref = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert pref["preference"]["matchExpressions"][0]["key"] == "nvidia.com/gpu.present"
    run_policy = m["spec"]["runPolicy"]
    assert run_policy["schedulingPolicy"] == {
        "minAvailable": 4,
        "queue": "training",
        "priorityClass": "training-high",
    }
    assert run_policy["cleanPodPolicy"] == "Running"
    assert run_policy["activeDeadlineSeconds"] == 259200 and run_policy["ttlSecondsAfterFinished"] == 86400
    assert run_policy["backoffLimit"] == 3
    labels = m["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu-batch"
    # Kueue admits the job; its label on the pods would make Kueue manage them twice.
    assert "kueue.x-k8s.io/queue-name" not in specs["Worker"]["template"]["metadata"]["labels"]


def test_labels_on_job_and_pods_select_the_attempt(pipeline: Pipeline) -> None:
    m = build_pytorchjob(pipeline, pipeline.stage("recaption"), 2)
    want = {
        "app.kubernetes.io/name": "sail-pipeline",
        "app.kubernetes.io/instance": "r1",
        "app.kubernetes.io/component": "recaption",
        "app.kubernetes.io/managed-by": "sailk8s",
        "sail.io/run": "r1",
        "sail.io/stage": "recaption",
        "sail.io/attempt": "2",
    }
    for labels in (
        m["metadata"]["labels"],
        *(s["template"]["metadata"]["labels"] for s in m["spec"]["pytorchReplicaSpecs"].values()),
    ):
        assert want.items() <= labels.items()


def test_elastic_stage_is_worker_only_with_c10d(pipeline: Pipeline, crd_path: Path) -> None:
    m = build_pytorchjob(pipeline, pipeline.stage("filter"), 1)
    assert list(m["spec"]["pytorchReplicaSpecs"]) == ["Worker"]
    assert m["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    assert m["spec"]["elasticPolicy"] == {
        "minReplicas": 2,
        "maxReplicas": 6,
        "rdzvBackend": "c10d",
        "maxRestarts": 3,
    }
    assert m["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == 2
    # The operator sets PET_NNODES=min:max for elastic jobs: no fixed --nnodes.
    assert not any(a.startswith("--nnodes") for a in container(m, "Worker")["command"])
    validate_manifest(m, crd_path)


def test_elastic_bounds_must_contain_nodes() -> None:
    p = make_pipeline()
    stages = [s.model_dump() for s in p.stages]
    stages[2]["scheduling"]["elastic_min_nodes"] = 5
    bad = make_pipeline(stages=stages)
    with pytest.raises(ConfigError, match=r"elastic_min_nodes \(5\) <= resources.nodes \(4\)"):
        build_pytorchjob(bad, bad.stage("filter"), 1)


def test_env_contract_and_credentials_only_by_secret_ref(pipeline: Pipeline) -> None:
    m = build_pytorchjob(
        pipeline,
        pipeline.stage("recaption"),
        1,
        store_endpoint="http://minio.sail:9000",
        store_region="eu-west-1",
    )
    env = env_of(m, "Worker")
    assert env["SAIL_RUN"]["value"] == "r1" and env["SAIL_STAGE"]["value"] == "recaption"
    assert env["SAIL_ATTEMPT"]["value"] == "1" and env["SAIL_STORE_URI"]["value"] == "s3://sail-data/r1"
    assert json.loads(env["SAIL_INPUTS"]["value"]) == ["data/raw"]
    assert env["SAIL_STORE_ENDPOINT"]["value"] == "http://minio.sail:9000"
    assert env["SAIL_STORE_REGION"]["value"] == "eu-west-1"
    for var in ("SAIL_STORE_ACCESS_KEY", "SAIL_STORE_SECRET_KEY"):
        assert "value" not in env[var]
        assert env[var]["valueFrom"]["secretKeyRef"] == {
            "name": "sail-store-credentials",
            "key": var,
            "optional": False,
        }


def test_credentials_never_appear_literally(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIL_STORE_ACCESS_KEY", "AKIA-very-secret-access")
    monkeypatch.setenv("SAIL_STORE_SECRET_KEY", "s3cr3t-key-material")
    for stage in pipeline.stages:
        text = json.dumps(build_pytorchjob(pipeline, stage, 1, store_endpoint="http://minio:9000"))
        assert "AKIA-very-secret-access" not in text and "s3cr3t-key-material" not in text


def test_no_secret_means_no_credential_env(pipeline: Pipeline) -> None:
    p = make_pipeline(store_secret=None)
    env = env_of(build_pytorchjob(p, p.stage("ingest"), 1))
    assert "SAIL_STORE_ACCESS_KEY" not in env and "SAIL_STORE_SECRET_KEY" not in env


def test_names_are_dns1035_even_for_long_runs() -> None:
    p = make_pipeline(run="a" * 40)
    stages = [s.model_dump() for s in p.stages]
    stages[0]["name"] = "x" * 30
    stages[1]["depends"] = ["x" * 30]
    p = make_pipeline(run="a" * 40, stages=stages)
    for attempt in (1, 12, 999):
        name = build_pytorchjob(p, p.stages[0], attempt)["metadata"]["name"]
        assert len(name) <= 63 and DNS1035.match(name), name
        assert name.endswith(f"-{attempt}")
    names = {build_pytorchjob(p, p.stages[0], a)["metadata"]["name"] for a in range(1, 50)}
    assert len(names) == 49  # attempts never collide


def test_spec_hash_is_deterministic_and_tracks_the_spec(pipeline: Pipeline) -> None:
    a = build_pytorchjob(pipeline, pipeline.stage("recaption"), 1)
    b = build_pytorchjob(pipeline, pipeline.stage("recaption"), 1)
    assert a == b
    h = a["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    assert h == spec_hash(a)
    other = make_pipeline(image="registry.example.com/sail/other:9")
    c = build_pytorchjob(other, other.stage("ingest"), 1)
    d = build_pytorchjob(pipeline, pipeline.stage("ingest"), 1)
    hashes = {x["metadata"]["annotations"][ANNOTATION_SPEC_HASH] for x in (c, d)}
    assert len(hashes) == 2


def test_attempt_must_be_positive(pipeline: Pipeline) -> None:
    with pytest.raises(ConfigError, match="attempt must be >= 1"):
        build_pytorchjob(pipeline, pipeline.stage("ingest"), 0)


def test_replica_rank() -> None:
    master = {"training.kubeflow.org/replica-type": "master", "training.kubeflow.org/replica-index": "0"}
    worker = {"training.kubeflow.org/replica-type": "worker", "training.kubeflow.org/replica-index": "2"}
    assert replica_rank(master) == 0
    assert replica_rank(worker) == 3
    assert replica_rank(worker, has_master=False) == 2


# -- validation: each webhook rule and enum catches its mistake -------------------------------


def _broken(pipeline: Pipeline, stage: str = "recaption") -> dict:
    return copy.deepcopy(build_pytorchjob(pipeline, pipeline.stage(stage), 1))


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda m: m["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2),
            "Master.replicas: must be 1",
        ),
        (
            lambda m: m["spec"]["pytorchReplicaSpecs"].update(
                Chief=m["spec"]["pytorchReplicaSpecs"]["Worker"]
            ),
            "replica type must be one of Master, Worker",
        ),
        (
            lambda m: m["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(
                name="trainer"
            ),
            "one container must be named 'pytorch'",
        ),
        (
            lambda m: m["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].pop(
                "image"
            ),
            "containers[0].image: must be set",
        ),
        (
            lambda m: m["spec"]["pytorchReplicaSpecs"]["Master"].update(restartPolicy="Sometimes"),
            "restartPolicy: 'Sometimes' is not one of",
        ),
        (
            lambda m: m["spec"]["runPolicy"].update(cleanPodPolicy="Some"),
            "cleanPodPolicy: 'Some' is not one of",
        ),
        (lambda m: m["metadata"].update(name="1-bad_name"), "is not a DNS-1035 label"),
        (lambda m: m["spec"].update(pytorchReplicaSpecs={}), "must not be empty"),
    ],
)
def test_webhook_rules(pipeline: Pipeline, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    m = _broken(pipeline)
    mutate(m)
    problems = webhook_errors(m)
    assert any(expected in p for p in problems), problems
    with pytest.raises(ManifestInvalid, match=re.escape(expected)):
        validate_manifest(m)


def test_elastic_without_worker_is_rejected(pipeline: Pipeline) -> None:
    m = _broken(pipeline, "filter")
    m["spec"]["pytorchReplicaSpecs"] = {"Master": m["spec"]["pytorchReplicaSpecs"]["Worker"]}
    m["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 1
    assert any("Worker: must be configured when elasticPolicy" in p for p in webhook_errors(m))
    m["spec"]["elasticPolicy"]["nProcPerNode"] = 8
    assert any("must not be used with spec.nprocPerNode" in p for p in webhook_errors(m))


def test_schema_catches_wrong_types(pipeline: Pipeline, crd_path: Path) -> None:
    m = _broken(pipeline)
    m["spec"]["runPolicy"]["backoffLimit"] = "three"
    m["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    with pytest.raises(ManifestInvalid) as info:
        validate_manifest(m, crd_path)
    text = str(info.value)
    assert "spec.runPolicy.backoffLimit: 'three' is not of type 'integer'" in text
    assert "spec.pytorchReplicaSpecs.Master.replicas" in text


def test_missing_crd_file_and_missing_jsonschema_give_clear_messages(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = build_pytorchjob(pipeline, pipeline.stage("ingest"), 1)
    with pytest.raises(validation.BackendError, match="cannot read the CRD at"):
        validate_manifest(m, tmp_path / "nope.yaml")
    (tmp_path / "crd.yaml").write_text("kind: Nothing\n")
    with pytest.raises(validation.BackendError, match="not a CustomResourceDefinition"):
        validate_manifest(m, tmp_path / "crd.yaml")
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # as if it were not installed
    with pytest.raises(validation.BackendError, match=r"needs jsonschema: pip install"):
        validation.schema_errors(m, {"type": "object"})


def test_crd_is_found_through_env(
    pipeline: Pipeline, crd_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAIL_PYTORCHJOB_CRD", str(crd_path))
    assert validation.find_crd() == crd_path
    assert validate_manifest(build_pytorchjob(pipeline, pipeline.stage("ingest"), 1)) is True


def test_kubectl_commands_for_one_attempt() -> None:
    # Built from the label constants, in one place: `submit`, `run` and `render` print these.
    hints = kubectl_commands("sail", "r1", ["sft"], attempt=2)
    assert hints == [
        "kubectl get pytorchjobs -n sail -l sail.io/run=r1",
        "kubectl logs -f -n sail -l sail.io/run=r1,sail.io/stage=sft,sail.io/attempt=2,"
        "training.kubeflow.org/replica-type=master",
    ]
