"""core/v1 Events, as the fake operator, scheduler and kubelet record them for `kubectl describe`."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

from sailk8s.testing.apierrors import ApiError

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes

Obj = dict[str, Any]


def record_event(
    kube: FakeKubernetes,
    obj: Obj,
    kind: str,
    reason: str,
    message: str,
    component: str = "pytorchjob-controller",
) -> None:
    """Record an Event of `kind` (Normal, Warning) about `obj`; a vanished namespace drops it."""
    meta = obj["metadata"]
    stamp = kube.clock.timestamp()
    event = {
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
        "involvedObject": {
            "kind": obj.get("kind"),
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta.get("uid"),
            "apiVersion": obj.get("apiVersion"),
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": component},
        "reportingComponent": component,
    }
    with contextlib.suppress(ApiError):
        kube.state.create(kube.type("events"), meta["namespace"], event)
