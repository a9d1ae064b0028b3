"""`dashboard.enabled`: a Deployment + Service serving `sailk8s ui` read-only, without API rights."""

from __future__ import annotations

from typing import Any

from chartkit import VALUE_SETS, find

from sailk8s import __version__

ON = VALUE_SETS["dashboard-values"]


def _deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = find(objects, "Deployment", "dashboard")
    return dep


def test_off_by_default(render: Any) -> None:
    objects = render()
    assert not find(objects, "Deployment", "dashboard") and not find(objects, "Service", "dashboard")


def test_deployment_serves_the_store_of_the_pipeline_from_the_controller_image(render: Any) -> None:
    objects = render(ON)
    pod = _deployment(objects)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == f"ghcr.io/sail-pipeline/sail-controller:{__version__}"
    assert c["command"] == ["python", "-m", "sailk8s", "ui", "--store", "s3://sail/pipeline",
                            "--host", "0.0.0.0", "--port", "8080"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in c["env"]}
    assert env["SAIL_STORE_ENDPOINT"]["value"] == "http://minio.storage.svc:9000"
    for key in ("SAIL_STORE_ACCESS_KEY", "SAIL_STORE_SECRET_KEY"):  # the Secret by reference only
        assert "value" not in env[key]
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "sail-store-credentials", "key": key}


def test_non_root_read_only_and_no_api_token(render: Any) -> None:
    objects = render(ON)
    pod = _deployment(objects)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}
    # No token: the dashboard can neither read nor write the Kubernetes API, and no Role names it.
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    for binding in find(objects, "RoleBinding") + find(objects, "ClusterRoleBinding"):
        assert "dashboard" not in str(binding["subjects"])
    assert {k for o in objects for k in [o["kind"]]} == {k for o in render() for k in [o["kind"]]} | {
        "Deployment", "Service"}


def test_service_selects_only_the_dashboard_pod(render: Any) -> None:
    objects = render(ON)
    (svc,) = find(objects, "Service", "dashboard")
    labels = _deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "dashboard"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]


def test_notes_say_how_to_reach_it(render_raw: Any) -> None:
    notes = next(t for p, t in render_raw(ON).items() if p.endswith("NOTES.txt"))
    assert "port-forward svc/sail-pipeline-dashboard 8080:8080" in notes
    default = next(t for p, t in render_raw().items() if p.endswith("NOTES.txt"))
    assert "dashboard" not in default
