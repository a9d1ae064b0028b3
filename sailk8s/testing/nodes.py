"""The fake cluster's nodes: a Ready GPU node for pods to land on, and a node that stops reporting."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from sailk8s.testing import podstatus
from sailk8s.testing.apierrors import ApiError

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes

Obj = dict[str, Any]


def node_for(index: int) -> str:
    """The node a replica's pod lands on: four nodes, shared round-robin by replica index."""
    return f"fake-node-{index % 4}"


def ensure_node(kube: FakeKubernetes, name: str, stamp: str) -> None:
    """A Ready GPU node for pods to land on (created the first time it is used)."""
    nodes = kube.type("nodes")
    if kube.state.find(nodes, None, name) is not None:
        return
    capacity = {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8", "pods": "110"}
    node = {
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "nvidia.com/gpu.present": "true"},
        },
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                podstatus.condition("Ready", True, stamp, "KubeletReady", "kubelet is posting ready status")
            ],
        },
    }
    with contextlib.suppress(ApiError):
        kube.state.create(nodes, None, node)


def lose_node(kube: FakeKubernetes, name: str, stamp: str) -> None:
    """The node stops reporting: Ready Unknown and the unreachable NoExecute taint."""

    def change(node: Obj) -> None:
        node["spec"]["taints"] = [
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": stamp}
        ]
        node["status"]["conditions"] = [
            {
                **podstatus.condition(
                    "Ready", False, stamp, "NodeStatusUnknown", "Kubelet stopped posting node status."
                ),
                "status": "Unknown",
            }
        ]

    with contextlib.suppress(ApiError):
        kube.state.mutate(kube.type("nodes"), None, name, change)
