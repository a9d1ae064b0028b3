"""RBAC: only the verbs the controller uses, namespaced, no wildcards, no Secret access."""

from __future__ import annotations

from typing import Any

from chartkit import VALUE_SETS, find, is_hook

CONTROLLER_RULES = {
    ("kubeflow.org", "pytorchjobs"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"get", "list", "watch", "create"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update", "patch"},
}


TRAINJOB_RULES = {
    **{k: v for k, v in CONTROLLER_RULES.items() if k != ("kubeflow.org", "pytorchjobs")},
    ("trainer.kubeflow.org", "trainjobs"): {"get", "list", "watch", "create", "delete", "patch"},
    ("trainer.kubeflow.org", "trainingruntimes"): {"get"},  # the runtime a job names, checked at submit
}


def expected_rules(values: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """The controller's grants for the job API the values choose."""
    return TRAINJOB_RULES if values.get("kubeflow", {}).get("jobApi") == "trainjob" else CONTROLLER_RULES


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_controller_role_grants_exactly_what_it_uses(render: Any) -> None:
    for name, values in VALUE_SETS.items():
        (role,) = find(render(values), "Role")
        assert grants(role["rules"]) == expected_rules(values), name


def test_no_wildcards_no_secrets_no_cluster_scope_outside_the_hook(render: Any) -> None:
    for name, values in VALUE_SETS.items():
        for obj in render(values):
            for rule in obj.get("rules", []):
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), (name, obj["metadata"]["name"], field)
                assert "secrets" not in rule["resources"], (name, obj["metadata"]["name"])
            if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                assert is_hook(obj), (name, obj["kind"], obj["metadata"]["name"])


def test_role_binding_binds_the_role_to_the_controller_account(render: Any) -> None:
    objects = render()
    (role,) = find(objects, "Role")
    (binding,) = find(objects, "RoleBinding")
    (sa,) = [o for o in find(objects, "ServiceAccount") if not is_hook(o)]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "sail"}]


def test_the_default_install_creates_nothing_cluster_scoped(render: Any) -> None:
    """The CRD check reads API discovery (system:discovery): a namespace admin can install."""
    for name, values in VALUE_SETS.items():
        assert not [o["kind"] for o in render(values) if o["kind"].startswith("Cluster")], name
    objects = render()
    (job,) = find(objects, "Job", "crd-check")
    (hook_sa,) = [o for o in find(objects, "ServiceAccount") if is_hook(o)]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == hook_sa["metadata"]["name"]
    for obj in (hook_sa, job):
        annotations = obj["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"])
               for o in objects if is_hook(o)}
    assert weights["ServiceAccount"] < weights["Job"]


def test_disabling_the_check_leaves_nothing_cluster_scoped(render: Any) -> None:
    objects = render({"crdCheck": {"enabled": False}})
    assert not [o for o in objects if is_hook(o) or o["kind"].startswith("Cluster")]


def test_rbac_and_account_can_be_brought_by_the_platform(render: Any) -> None:
    objects = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "sail-bot"}})
    assert not find(objects, "Role") and not find(objects, "RoleBinding")
    assert not [o for o in find(objects, "ServiceAccount") if not is_hook(o)]
    job = next(o for o in find(objects, "Job", "controller"))
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "sail-bot"
