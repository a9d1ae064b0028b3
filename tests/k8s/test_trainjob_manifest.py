"""The pure TrainJob and sail-torch runtime builders, checked against the Trainer v2.3 CRD schemas,
their CEL rules and our implementation of the trainer's admission webhook rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_pipelines import make_pipeline

from sailk8s.backends.kubernetes.jobapi import job_api, reference_runtime
from sailk8s.backends.kubernetes.jobkinds import LABEL_ANCESTOR
from sailk8s.backends.kubernetes.manifest import ANNOTATION_SPEC_HASH, build_pytorchjob
from sailk8s.backends.kubernetes.trainjob import PATCH_MANAGER, build_trainjob, trainjob_notes
from sailk8s.backends.kubernetes.trainruntime import SIGNAL_EXIT_CODES, build_training_runtime
from sailk8s.backends.kubernetes.trainvalidation import (
    runtime_webhook_errors,
    trainjob_webhook_errors,
    validate_runtime,
    validate_trainjob,
)
from sailk8s.backends.kubernetes.validation import ManifestInvalid
from sailk8s.errors import ConfigError
from sailk8s.spec import Pipeline

Obj = dict[str, Any]


@pytest.fixture
def tj_pipeline() -> Pipeline:
    return make_pipeline(kubernetes={"job_api": "trainjob"})


def node_patch(job: Obj) -> Obj:
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return rjob


def runtime(pipeline: Pipeline, **kw: Any) -> Obj:
    return build_training_runtime(image=pipeline.image, **kw)


@pytest.mark.parametrize("stage", ["ingest", "recaption"])
def test_every_realistic_stage_passes_schema_cel_and_webhook(
    tj_pipeline: Pipeline, trainer_crds: Path, stage: str
) -> None:
    job = build_trainjob(tj_pipeline, tj_pipeline.stage(stage), 1, store_endpoint="http://minio.sail:9000")
    rt = runtime(tj_pipeline, gang="coscheduling")
    assert validate_runtime(rt, trainer_crds) is True
    assert validate_trainjob(job, rt, trainer_crds) is True  # schema checked too


def test_trainer_is_the_pytorchjob_command_env_and_resources(tj_pipeline: Pipeline) -> None:
    stage = tj_pipeline.stage("recaption")
    job = build_trainjob(tj_pipeline, stage, 2, run_id="abc")
    pt = build_pytorchjob(tj_pipeline, stage, 2, run_id="abc")
    pt_container = pt["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    trainer = job["spec"]["trainer"]
    assert trainer["command"] == pt_container["command"]
    assert trainer["command"][:3] == ["python", "-m", "jobs.launch"] and trainer["command"][-2:] == [
        "-m",
        "jobs.caption",
    ]
    assert trainer["env"] == pt_container["env"]
    assert trainer["resourcesPerNode"] == pt_container["resources"]
    assert trainer["image"] == "registry.example.com/sail/sail-caption:0.1.0"
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert job["metadata"]["name"] == "r1-recaption-2" == pt["metadata"]["name"]
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "sail-torch",
    }
    assert job["spec"]["activeDeadlineSeconds"] == 259200


def test_labels_on_the_trainjob_and_its_pods_kueue_on_the_job_only(tj_pipeline: Pipeline) -> None:
    job = build_trainjob(tj_pipeline, tj_pipeline.stage("recaption"), 1, run_id="abc")
    labels = job["metadata"]["labels"]
    assert labels["sail.io/run"] == "r1" and labels["sail.io/stage"] == "recaption"
    assert labels["sail.io/run-id"] == "abc" and labels["sail.io/attempt"] == "1"
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu-batch"
    pod_labels = node_patch(job)["template"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == {k: v for k, v in labels.items() if k != "kueue.x-k8s.io/queue-name"}
    assert job["spec"]["runtimePatches"][0]["manager"] == PATCH_MANAGER


def test_placement_goes_through_the_runtime_patch(tj_pipeline: Pipeline) -> None:
    job = build_trainjob(tj_pipeline, tj_pipeline.stage("recaption"), 1)
    pod = node_patch(job)["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    keys = [t.get("key") for t in pod["tolerations"]]
    assert keys == ["pool", "nvidia.com/gpu"]
    assert pod["volumes"] == [{"emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}, "name": "dshm"}]
    assert "containers" not in pod  # the node container's env may only come from spec.trainer
    meta = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["metadata"]
    assert meta["annotations"] == {"scheduling.volcano.sh/queue-name": "training"}


def test_a_user_named_namespaced_runtime() -> None:
    p = make_pipeline(
        kubernetes={"job_api": "trainjob", "runtime": {"name": "team-torch", "kind": "TrainingRuntime"}}
    )
    job = build_trainjob(p, p.stage("ingest"), 1)
    assert (
        job["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"
        and job["spec"]["runtimeRef"]["name"] == "team-torch"
    )
    assert reference_runtime(p, job) is None  # a runtime we did not build: its rules need the cluster


def test_elastic_stages_are_refused_naming_the_field(tj_pipeline: Pipeline) -> None:
    with pytest.raises(ConfigError, match=r"stages\.filter\.scheduling\.elastic_min_nodes"):
        build_trainjob(tj_pipeline, tj_pipeline.stage("filter"), 1)


def test_fields_a_trainjob_cannot_carry_are_named(tj_pipeline: Pipeline) -> None:
    notes = trainjob_notes(tj_pipeline.stage("recaption"))
    assert any(n.startswith("stages.recaption.resources.priority_class") for n in notes)
    assert trainjob_notes(tj_pipeline.stage("ingest")) == []


def test_spec_hash_tracks_the_spec(tj_pipeline: Pipeline) -> None:
    a = build_trainjob(tj_pipeline, tj_pipeline.stage("ingest"), 1)
    b = build_trainjob(tj_pipeline, tj_pipeline.stage("ingest"), 1)
    assert a == b
    other = make_pipeline(kubernetes={"job_api": "trainjob"}, image="registry.example.com/other:1")
    c = build_trainjob(other, other.stage("ingest"), 1)
    assert (
        a["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        != c["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    )


def test_runtime_defaults_security_shm_secret_and_exit_codes(
    tj_pipeline: Pipeline, trainer_crds: Path
) -> None:
    rt = runtime(tj_pipeline)
    assert rt["kind"] == "ClusterTrainingRuntime" and "namespace" not in rt["metadata"]
    assert "podGroupPolicy" not in rt["spec"] and rt["spec"]["mlPolicy"]["torch"] == {}
    (node,) = rt["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["template"]["metadata"]["labels"] == {LABEL_ANCESTOR: "trainer"}
    job_spec = node["template"]["spec"]
    (rule,) = job_spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "NotIn"
    assert 137 in SIGNAL_EXIT_CODES and 143 in SIGNAL_EXIT_CODES and 1 not in SIGNAL_EXIT_CODES
    pod = job_spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["name"] == "node" and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["envFrom"] == [{"secretRef": {"name": "sail-store-credentials", "optional": False}}]
    assert c["volumeMounts"] == [{"mountPath": "/dev/shm", "name": "dshm"}]
    assert pod["volumes"] == [{"emptyDir": {"medium": "Memory"}, "name": "dshm"}]
    ns_rt = runtime(tj_pipeline, namespace="sail", gang="volcano")
    assert ns_rt["kind"] == "TrainingRuntime" and ns_rt["metadata"]["namespace"] == "sail"
    assert ns_rt["spec"]["podGroupPolicy"] == {"volcano": {}}
    assert validate_runtime(ns_rt, trainer_crds) is True
    cos = runtime(tj_pipeline, gang="coscheduling", schedule_timeout_seconds=120)
    assert cos["spec"]["podGroupPolicy"] == {"coscheduling": {"scheduleTimeoutSeconds": 120}}


def test_the_stock_runtimes_pass_our_runtime_rules(trainer_crds: Path) -> None:
    for path in sorted((trainer_crds / "runtimes").glob("*.yaml")):
        assert validate_runtime(yaml.safe_load(path.read_text()), trainer_crds) is True, path


# -- negative cases: each rule fails on its violation ---------------------------------------------


def _job(pipeline: Pipeline) -> Obj:
    return build_trainjob(pipeline, pipeline.stage("recaption"), 1)


TRAINJOB_VIOLATIONS = [
    ("name", lambda j: j["metadata"].update(name="R1-recaption-1"), "metadata.name"),
    ("long name", lambda j: j["metadata"].update(name="a" * 64), "metadata.name"),
    ("runtime kind", lambda j: j["spec"]["runtimeRef"].update(kind="Runtime"), "unsupported runtime"),
    (
        "runtime group",
        lambda j: j["spec"]["runtimeRef"].update(apiGroup="kubeflow.org"),
        "unsupported runtime",
    ),
    ("managedBy", lambda j: j["spec"].update(managedBy="me/controller"), "spec.managedBy"),
    (
        "reserved env",
        lambda j: j["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "2"}),
        "PET_NNODES",
    ),
    ("manager", lambda j: j["spec"]["runtimePatches"][0].update(manager="sailk8s"), "domain-prefixed path"),
    (
        "duplicate manager",
        lambda j: j["spec"]["runtimePatches"].append(copy.deepcopy(j["spec"]["runtimePatches"][0])),
        "duplicate manager",
    ),
    (
        "env on node",
        lambda j: node_patch(j)["template"]["spec"]["template"]["spec"].update(
            containers=[{"name": "node", "env": [{"name": "X", "value": "1"}]}]
        ),
        "must not set env",
    ),
    (
        "unknown job",
        lambda j: node_patch(j).update(name="trainer"),
        "replicated job ('trainer') that the runtime lacks",
    ),
    (
        "unknown container",
        lambda j: node_patch(j)["template"]["spec"]["template"]["spec"].update(
            containers=[{"name": "sidecar"}]
        ),
        "('sidecar') that the runtime job",
    ),
    (
        "runtime name",
        lambda j: j["spec"]["runtimeRef"].update(name="torch-distributed"),
        "not the runtime given",
    ),
    (
        "initializer without job",
        lambda j: j["spec"].update(initializer={"model": {"storageUri": "hf://x/y"}}),
        "model-initializer",
    ),
    (
        "storage uri",
        lambda j: j["spec"].update(initializer={"dataset": {"storageUri": "no-scheme"}}),
        "storageUri",
    ),
]


@pytest.mark.parametrize(
    ("what", "break_it", "message"), TRAINJOB_VIOLATIONS, ids=[v[0] for v in TRAINJOB_VIOLATIONS]
)
def test_trainjob_webhook_rules_fail_on_violations(
    tj_pipeline: Pipeline, what: str, break_it: Any, message: str
) -> None:
    job = _job(tj_pipeline)
    rt = runtime(tj_pipeline)
    assert trainjob_webhook_errors(job, rt) == []
    break_it(job)
    errors = trainjob_webhook_errors(job, rt)
    assert any(message in e for e in errors), errors


def test_trainingruntime_must_share_the_trainjobs_namespace(tj_pipeline: Pipeline) -> None:
    job = _job(tj_pipeline)
    job["spec"]["runtimeRef"]["kind"] = "TrainingRuntime"
    errors = trainjob_webhook_errors(job, runtime(tj_pipeline, namespace="elsewhere"))
    assert any("TrainJob's namespace (sail)" in e for e in errors), errors
    assert trainjob_webhook_errors(job, runtime(tj_pipeline, namespace="sail")) == []


def test_empty_volcano_queue_is_refused(tj_pipeline: Pipeline) -> None:
    job = _job(tj_pipeline)
    job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["metadata"]["annotations"] = {
        "scheduling.volcano.sh/queue-name": ""
    }
    assert trainjob_webhook_errors(job, runtime(tj_pipeline)) == []  # no Volcano: not its business
    errors = trainjob_webhook_errors(job, runtime(tj_pipeline, gang="volcano"))
    assert any("Volcano queue name must not be empty" in e for e in errors), errors


def _rjob(rt: Obj) -> Obj:
    return rt["spec"]["template"]["spec"]["replicatedJobs"][0]


RUNTIME_VIOLATIONS = [
    ("replicas", lambda r: _rjob(r).update(replicas=2), "always must be 1"),
    (
        "container name",
        lambda r: _rjob(r)["template"]["spec"]["template"]["spec"]["containers"][0].update(name="trainer"),
        "required container 'node'",
    ),
    ("two ml policies", lambda r: r["spec"]["mlPolicy"].update(mpi={}), "only one of the policies"),
    (
        "two pod group policies",
        lambda r: r["spec"].update(podGroupPolicy={"coscheduling": {}, "volcano": {}}),
        "only one of coscheduling, volcano",
    ),
    (
        "env injection into node",
        lambda r: r["spec"]["mlPolicy"]["torch"].update(
            envInjection={"targets": [{"jobName": "node", "containerNames": ["node"]}]}
        ),
        "must not include 'node'",
    ),
    (
        "env injection target missing",
        lambda r: r["spec"]["mlPolicy"]["torch"].update(
            envInjection={"targets": [{"jobName": "node", "containerNames": ["preflight"]}]}
        ),
        "'preflight' of job 'node' is not in the template",
    ),
    (
        "startup order and dependsOn",
        lambda r: (
            r["spec"]["template"]["spec"].update(startupPolicy={"startupPolicyOrder": "InOrder"}),
            _rjob(r).update(dependsOn=[{"name": "x", "status": "Ready"}]),
        ),
        "mutually exclusive",
    ),
    ("no trainer job", lambda r: _rjob(r)["template"]["metadata"].update(labels={}), "no job is labelled"),
]


@pytest.mark.parametrize(
    ("what", "break_it", "message"), RUNTIME_VIOLATIONS, ids=[v[0] for v in RUNTIME_VIOLATIONS]
)
def test_runtime_webhook_rules_fail_on_violations(
    tj_pipeline: Pipeline, what: str, break_it: Any, message: str
) -> None:
    rt = runtime(tj_pipeline)
    assert runtime_webhook_errors(rt) == []
    break_it(rt)
    errors = runtime_webhook_errors(rt)
    assert any(message in e for e in errors), errors


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda j: j["spec"]["trainer"].update(numNodes="4"), "spec.trainer.numNodes"),
        (lambda j: j["spec"]["runtimePatches"][0].update(manager=""), "spec.runtimePatches.0.manager"),
        # Pod priority is not patchable in v2.3: the API server would drop it without a word.
        (
            lambda j: node_patch(j)["template"]["spec"]["template"]["spec"].update(priorityClassName="high"),
            "priorityClassName: unknown field",
        ),
        (lambda j: j["spec"]["trainer"].update(nodes=4), "spec.trainer.nodes: unknown field"),
    ],
)
def test_schema_catches_wrong_types_and_unknown_fields(
    tj_pipeline: Pipeline, trainer_crds: Path, break_it: Any, message: str
) -> None:
    job = _job(tj_pipeline)
    break_it(job)
    with pytest.raises(ManifestInvalid) as err:
        validate_trainjob(job, None, trainer_crds)
    assert any(message in p for p in err.value.problems), err.value.problems


def test_runtime_schema_catches_a_bad_enum(tj_pipeline: Pipeline, trainer_crds: Path) -> None:
    rt = runtime(tj_pipeline)
    rt["spec"]["podGroupPolicy"] = {"volcano": {"networkTopology": {"mode": "bogus"}}}
    with pytest.raises(ManifestInvalid, match=r"networkTopology\.mode"):
        validate_runtime(rt, trainer_crds)


def test_job_api_picks_builder_and_rules(tj_pipeline: Pipeline) -> None:
    api = job_api("trainjob")
    job = api.build(tj_pipeline, tj_pipeline.stage("ingest"), 1, namespace="other")
    assert job["kind"] == "TrainJob" and job["metadata"]["namespace"] == "other"
    api.check(job, tj_pipeline)
    job["spec"]["trainer"]["env"].append({"name": "PET_NODE_RANK", "value": "0"})
    with pytest.raises(ManifestInvalid, match="TrainJob 'r1-ingest-1' is invalid"):
        api.check(job, tj_pipeline)
    assert job_api("pytorchjob").build(tj_pipeline, tj_pipeline.stage("ingest"), 1)["kind"] == "PyTorchJob"
    assert api.kubectl("sail", "r1", ["ingest"])[0] == "kubectl get trainjobs -n sail -l sail.io/run=r1"
