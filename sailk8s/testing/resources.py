"""The resource kinds the fake API server serves, its discovery documents and table views."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the API and how it is named."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        """`v1` for the core group, `group/version` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def qualified(self) -> str:
        """`pods` or `pytorchjobs.kubeflow.org`, as error messages spell it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


CORE = ""
COORDINATION = "coordination.k8s.io"
KUBEFLOW = "kubeflow.org"
APIEXTENSIONS = "apiextensions.k8s.io"
CRD_NAME = "pytorchjobs.kubeflow.org"
TRAINER = "trainer.kubeflow.org"  # Kubeflow Trainer v2: TrainJobs and their runtimes

RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType(CORE, "v1", "namespaces", "Namespace", False, ("ns",), ("status",)),
    ResourceType(CORE, "v1", "pods", "Pod", True, ("po",), ("status", "log"), ("all",)),
    ResourceType(CORE, "v1", "events", "Event", True, ("ev",)),
    ResourceType(CORE, "v1", "services", "Service", True, ("svc",), ("status",), ("all",)),
    ResourceType(CORE, "v1", "configmaps", "ConfigMap", True, ("cm",)),
    ResourceType(CORE, "v1", "secrets", "Secret", True),
    ResourceType(CORE, "v1", "nodes", "Node", False, ("no",), ("status",)),
    ResourceType(COORDINATION, "v1", "leases", "Lease", True),
    ResourceType(KUBEFLOW, "v1", "pytorchjobs", "PyTorchJob", True, (), ("status",), ("all", "kubeflow")),
    ResourceType(TRAINER, "v1alpha1", "trainjobs", "TrainJob", True, (), ("status",), ("all",)),
    ResourceType(TRAINER, "v1alpha1", "trainingruntimes", "TrainingRuntime", True),
    ResourceType(TRAINER, "v1alpha1", "clustertrainingruntimes", "ClusterTrainingRuntime", False),
    ResourceType(
        APIEXTENSIONS,
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        ("crd", "crds"),
        ("status",),
    ),
)


@dataclass
class ResourceRegistry:
    """The resource types currently served; the PyTorchJob CRD can be 'not installed'."""

    types: tuple[ResourceType, ...] = RESOURCE_TYPES
    crd_installed: bool = True
    trainer_installed: bool = True  # False: a cluster without Kubeflow Trainer v2
    _hidden_groups: set[str] = field(default_factory=set)

    def served(self) -> list[ResourceType]:
        """Types visible now (kubeflow.org vanishes when the CRD is not installed, trainer.kubeflow.org
        without the Trainer)."""
        return [t for t in self.types if (t.group != KUBEFLOW or self.crd_installed)
                and (t.group != TRAINER or self.trainer_installed)]

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The type served at /apis/<group>/<version>/<plural>, if any."""
        for rtype in self.served():
            if (rtype.group, rtype.version, rtype.plural) == (group, version, plural):
                return rtype
        return None

    def group_versions(self) -> dict[str, list[str]]:
        """Group name -> versions, for the served types (core group is "")."""
        result: dict[str, list[str]] = {}
        for rtype in self.served():
            versions = result.setdefault(rtype.group, [])
            if rtype.version not in versions:
                versions.append(rtype.version)
        return result

    def api_versions(self, server: str) -> Obj:
        """GET /api."""
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
        }

    def _group_doc(self, group: str, versions: list[str]) -> Obj:
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def api_group_list(self) -> Obj:
        """GET /apis (legacy discovery)."""
        groups = [self._group_doc(g, v) for g, v in self.group_versions().items() if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def api_group(self, group: str) -> Obj | None:
        """GET /apis/<group>."""
        versions = self.group_versions().get(group)
        if not group or not versions:
            return None
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, versions)}

    def resource_list(self, group: str, version: str) -> Obj | None:
        """GET /api/v1 or /apis/<group>/<version>."""
        types = [t for t in self.served() if (t.group, t.version) == (group, version)]
        if not types:
            return None
        resources: list[Obj] = []
        for rtype in types:
            resources.append(
                {
                    "name": rtype.plural,
                    "singularName": rtype.singular,
                    "namespaced": rtype.namespaced,
                    "kind": rtype.kind,
                    "verbs": _VERBS,
                    **({"shortNames": list(rtype.short_names)} if rtype.short_names else {}),
                    **({"categories": list(rtype.categories)} if rtype.categories else {}),
                }
            )
            for sub in rtype.subresources:
                verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
                kind = "Pod" if sub == "log" else rtype.kind
                resources.append(
                    {
                        "name": f"{rtype.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rtype.namespaced,
                        "kind": kind,
                        "verbs": verbs,
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": types[0].api_version,
            "resources": resources,
        }

    def aggregated(self, core: bool) -> Obj:
        """Aggregated discovery (apidiscovery.k8s.io/v2) for /api (core) or /apis."""
        items: list[Obj] = []
        for group, versions in self.group_versions().items():
            if bool(group) == core:
                continue
            version_docs: list[Obj] = []
            for version in versions:
                resources: list[Obj] = []
                for rtype in self.served():
                    if (rtype.group, rtype.version) != (group, version):
                        continue
                    response_kind = {"group": group, "version": version, "kind": rtype.kind}
                    doc: Obj = {
                        "resource": rtype.plural,
                        "responseKind": response_kind,
                        "scope": "Namespaced" if rtype.namespaced else "Cluster",
                        "singularResource": rtype.singular,
                        "verbs": _VERBS,
                    }
                    if rtype.short_names:
                        doc["shortNames"] = list(rtype.short_names)
                    if rtype.categories:
                        doc["categories"] = list(rtype.categories)
                    if rtype.subresources:
                        doc["subresources"] = [
                            {
                                "subresource": sub,
                                "responseKind": {"group": "", "version": "v1", "kind": "Pod"}
                                if sub == "log"
                                else response_kind,
                                "verbs": ["get"] if sub == "log" else ["get", "patch", "update"],
                            }
                            for sub in rtype.subresources
                        ]
                    resources.append(doc)
                version_docs.append({"version": version, "resources": resources, "freshness": "Current"})
            items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": version_docs})
        return {
            "kind": "APIGroupDiscoveryList",
            "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": items,
        }


def _age(timestamp: str | None, now: dt.datetime) -> str:
    """kubectl's short age: 5s, 3m, 2h, 4d."""
    if not timestamp:
        return "<unknown>"
    created = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((now - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _pod_cells(pod: Obj) -> list[Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    containers = pod.get("spec", {}).get("containers") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    status = pod.get("status", {}).get("reason") or pod.get("status", {}).get("phase", "Pending")
    for s in statuses:
        state = s.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            status = state["waiting"]["reason"]
        elif "terminated" in state and state["terminated"].get("reason"):
            status = state["terminated"]["reason"]
    if pod.get("metadata", {}).get("deletionTimestamp"):
        status = "Terminating"
    return [f"{ready}/{len(containers)}", status, restarts]


def table(rtype: ResourceType, objects: list[Obj], list_meta: Obj, include: str, now: dt.datetime) -> Obj:
    """A meta.k8s.io/v1 Table, the view `kubectl get` asks for."""
    columns: list[Obj] = [{"name": "Name", "type": "string", "format": "name", "description": "Name"}]
    if rtype.kind == "Pod":
        columns += [
            {"name": n, "type": t, "format": "", "description": n}
            for n, t in (("Ready", "string"), ("Status", "string"), ("Restarts", "integer"))
        ]
    elif rtype.kind in ("PyTorchJob", "TrainJob"):  # both CRDs print .status.conditions[-1:].type
        columns.append({"name": "State", "type": "string", "format": "", "description": "State"})
    columns.append({"name": "Age", "type": "string", "format": "", "description": "Age"})
    rows: list[Obj] = []
    for obj in objects:
        meta = obj.get("metadata", {})
        cells: list[Any] = [meta.get("name")]
        if rtype.kind == "Pod":
            cells += _pod_cells(obj)
        elif rtype.kind in ("PyTorchJob", "TrainJob"):  # both CRDs print .status.conditions[-1:].type
            conditions = obj.get("status", {}).get("conditions") or []
            cells.append(conditions[-1].get("type", "") if conditions else "")
        cells.append(_age(meta.get("creationTimestamp"), now))
        row: Obj = {"cells": cells}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    }
