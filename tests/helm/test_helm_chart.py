"""The chart renders a controller that runs the pipeline file from values, for each values set."""

from __future__ import annotations

import base64
import tomllib
from typing import Any

import pytest
import yaml
from chartkit import (
    CHART_DIR,
    KIND_IMAGE,
    MINIMAL_CONFIG,
    NAMESPACE,
    ROOT,
    VALUE_SETS,
    find,
    is_hook,
    pipeline_of,
)

from sailk8s import __version__, exitcodes
from sailk8s.spec import STAGE_KINDS


def controller_job(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [o for o in find(objects, "Job", "controller") if not is_hook(o)]
    return job


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_versions_follow_the_package() -> None:
    chart = yaml.safe_load((ROOT / "helm/sail-pipeline/Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == chart["version"] == project["version"] == __version__


def test_every_values_set_renders_a_valid_pipeline(render: Any,
                                                   value_set: tuple[str, dict[str, Any]]) -> None:
    name, values = value_set
    objects = render(values)
    pipeline = pipeline_of(objects)
    assert pipeline.backend == "kubernetes"
    assert pipeline.namespace is None  # the controller acts in its own namespace (SAIL_NAMESPACE)
    job = controller_job(objects)
    container = job["spec"]["template"]["spec"]["containers"][0]
    secret_ref = env_of(container)["SAIL_STORE_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"]
    assert pipeline.store_secret == secret_ref, name
    for stage in pipeline.stages:
        image = stage.resources.image or ""
        assert image.rsplit("/", 1)[-1].split(":")[0] == KIND_IMAGE[stage.kind], (name, stage.name)


def test_controller_job_runs_the_pipeline_file_least_privileged(render: Any) -> None:
    objects = render()
    job = controller_job(objects)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "sailk8s", "run", "-f", "/etc/sail/pipeline.yaml"]
    assert container["image"] == f"ghcr.io/sail-pipeline/sail-controller:{__version__}"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (cm,) = find(objects, "ConfigMap")
    assert volumes[mounts["/etc/sail"]["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    (sa,) = [o for o in find(objects, "ServiceAccount") if not is_hook(o)]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert env_of(container)["SAIL_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # A bad pipeline file fails the Job at once instead of burning retries; a store outage
    # (a SailError, exit 2) is retried.
    (rule, _) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [exitcodes.BAD_CONFIG]


def test_changed_stage_definitions_stop_the_run_unless_told_to_rerun(render: Any) -> None:
    def argv(values: dict[str, Any]) -> list[str]:
        (container,) = controller_job(render(values))["spec"]["template"]["spec"]["containers"]
        return [*container["command"], *container.get("args", [])]

    assert "--rerun-changed" not in argv({})  # default "fail": exit 3, which fails the Job at once
    assert argv({"controller": {"onDefinitionChange": "rerun"}})[-1] == "--rerun-changed"


def test_controller_job_is_replaced_only_when_its_pod_or_pipeline_changes(render: Any) -> None:
    name = controller_job(render())["metadata"]["name"]
    assert controller_job(render({"controller": {"backoffLimit": 6}}))["metadata"]["name"] == name
    changed_pipeline = {"pipeline": {"run": "another-run"}}
    changed_image = {"image": {"tag": "0.2.0"}}
    assert controller_job(render(changed_pipeline))["metadata"]["name"] != name
    assert controller_job(render(changed_image))["metadata"]["name"] != name
    assert all(len(controller_job(render(v))["metadata"]["name"]) <= 63
               for v in ({"fullnameOverride": "x" * 50}, {}))


def test_node_pools_flow_into_stage_resources(render: Any) -> None:
    pipeline = pipeline_of(render(VALUE_SETS["gpu-pools-values"]))
    pretrain = pipeline.stage("pretrain").resources
    assert pretrain.node_selector == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert pretrain.priority_class == "training-high"
    assert [t.model_dump(exclude_none=True) for t in pretrain.tolerations] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoExecute",
         "toleration_seconds": 600},
    ]
    caption = pipeline.stage("caption").resources
    assert caption.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert caption.priority_class == "batch-low"
    # A stage's own placement wins over the pool of its kind.
    sft = pipeline.stage("sft").resources
    assert sft.node_selector == {"pool": "h200"}
    assert pipeline.stage("evaluate").resources.tolerations == []


def test_kueue_queue_reaches_every_stage_unless_set(render: Any) -> None:
    pipeline = pipeline_of(render(VALUE_SETS["kueue-values"]))
    assert pipeline.stage("pretrain").scheduling.kueue_queue == "team-vl"
    assert pipeline.stage("pretrain").scheduling.gang is True
    assert pipeline.stage("sft").scheduling.kueue_queue == "team-vl-priority"
    assert all(s.scheduling.kueue_queue is None for s in pipeline_of(render()).stages)


def test_default_install_uses_the_existing_secret_and_creates_none(render: Any) -> None:
    objects = render()
    assert find(objects, "Secret") == []
    assert pipeline_of(objects).store_secret == "sail-store-credentials"
    assert find(objects, "StatefulSet") == []


def test_existing_secret_registry_and_pull_secrets(render: Any) -> None:
    objects = render(VALUE_SETS["existing-secret-values"])
    assert find(objects, "Secret") == []
    pod = controller_job(objects)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["containers"][0]["image"] == "registry.example.com/sail-controller:0.1.0"
    env = env_of(pod["containers"][0])
    assert env["SAIL_STORE_REGION"]["value"] == "eu-west-1"
    assert "SAIL_STORE_ENDPOINT" not in env  # AWS S3
    pipeline = pipeline_of(objects)
    assert pipeline.store_secret == "team-vl-s3"
    assert pipeline.image == "registry.example.com/sail-train:0.1.0"
    assert controller_job(objects)["spec"]["ttlSecondsAfterFinished"] == 604800


def test_bundled_minio_has_storage_a_bucket_step_and_generated_keys(render: Any) -> None:
    objects = render(VALUE_SETS["bundled-minio-values"])
    (sts,) = find(objects, "StatefulSet", "minio")
    (svc,) = find(objects, "Service", "minio")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "standard"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    (secret,) = find(objects, "Secret")
    keys = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert len(keys["SAIL_STORE_ACCESS_KEY"]) == 20 and len(keys["SAIL_STORE_SECRET_KEY"]) == 40
    minio_env = env_of(sts["spec"]["template"]["spec"]["containers"][0])
    assert minio_env["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "SAIL_STORE_ACCESS_KEY"}
    pod = controller_job(objects)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    init_env = env_of(init)
    endpoint = f"http://{svc['metadata']['name']}.{NAMESPACE}.svc:9000"
    assert init_env["SAIL_STORE_ENDPOINT"]["value"] == endpoint
    assert init_env["SAIL_BUCKET"]["value"] == "sail-trial"
    assert 'mc mb --ignore-existing "sail/$SAIL_BUCKET"' in init["args"][0]
    assert env_of(pod["containers"][0])["SAIL_STORE_ENDPOINT"]["value"] == endpoint


@pytest.mark.parametrize(("values", "message"), [
    ({"store": {"existingSecret": ""}}, "store credentials missing: set store.existingSecret"),
    ({"store": {"accessKey": "a", "secretKey": "b"}},
     'store.accessKey/secretKey are set but store.existingSecret is "sail-store-credentials"'),
    ({"serviceAccount": {"create": False}}, "rbac.create binds the Role to serviceAccount.name"),
])
def test_contradictory_values_fail_with_a_message(render: Any, helm: Any, values: dict[str, Any],
                                                  message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match="execution error") as err:
        render(values)
    assert message in str(err.value)


def test_no_credential_value_outside_secrets(render_raw: Any) -> None:
    values = VALUE_SETS["gpu-pools-values"]
    secrets = [values["store"]["accessKey"], values["store"]["secretKey"]]
    needles = secrets + [base64.b64encode(s.encode()).decode() for s in secrets]
    rendered = render_raw(values)
    found_in_secret = False
    for path, text in rendered.items():
        for doc in ([text] if path.endswith("NOTES.txt") else yaml.safe_load_all(text)):
            if not doc:
                continue
            if isinstance(doc, dict) and doc["kind"] == "Secret":
                found_in_secret = True
                continue
            dumped = yaml.safe_dump(doc) if isinstance(doc, dict) else doc
            assert not [n for n in needles if n in dumped], f"credential in {path}"
    assert found_in_secret
    # And no env literal carries any SAIL_STORE_*_KEY, on any values set.


def test_credentials_never_come_as_env_literals(render: Any, value_set: tuple[str, dict[str, Any]]) -> None:
    for obj in render(value_set[1]):
        if obj["kind"] not in ("Job", "StatefulSet"):
            continue
        spec = obj["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            for var in container.get("env", []):
                if var["name"] in ("SAIL_STORE_ACCESS_KEY", "SAIL_STORE_SECRET_KEY",
                                   "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], var["name"]


def test_every_stage_kind_gets_its_image(render: Any) -> None:
    stages = [{"name": k, "kind": k, "config": MINIMAL_CONFIG.get(k, {})} for k in STAGE_KINDS]
    pipeline = pipeline_of(render({"pipeline": {"stages": stages}}))
    for stage in pipeline.stages:
        assert stage.resources.image == f"ghcr.io/sail-pipeline/{KIND_IMAGE[stage.kind]}:{__version__}"


def test_notes_say_how_to_follow_the_run(render_raw: Any) -> None:
    notes = next(t for p, t in render_raw().items() if p.endswith("NOTES.txt"))
    assert "python -m sailk8s status sail-demo" in notes
    assert "kubectl -n sail logs -f -l sail.io/run=sail-demo,sail.io/stage=<stage>," \
           "training.kubeflow.org/replica-type=master" in notes


def test_the_charts_kind_images_are_the_registrys() -> None:
    """image.kinds in values.yaml is the registry's kind -> image table, key for key."""
    from sailk8s.stageconfig.registry import KINDS

    image = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["image"]
    assert image["kinds"] == {name: k.image for name, k in KINDS.items()}
    assert set(image["workloads"]) == {k.image for k in KINDS.values()}


def test_a_kind_without_an_image_fails_the_render_with_its_name(chart: Any) -> None:
    """Before the registry, an unknown kind silently got the train image."""
    with pytest.raises(Exception, match="sft"):  # null removes the key from Helm's merged values
        chart.render({"image": {"kinds": {"sft": None}}}, name="x", namespace="y")
