"""A pod's first container as `podman run` arguments, the way a kubelet would run it (pure)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_FACTORS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


class PodSpecError(ValueError):
    """The pod cannot be run as a container; the message is the kubelet's reason text."""


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (`2Gi`, `500m`, `1.5`) as a number."""
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        raise PodSpecError(f"quantities must match the regular expression {_QUANTITY.pattern}: {value!r}")
    return float(match.group(1)) * _FACTORS[match.group(2) or ""]


@dataclass
class ContainerPlan:
    """What `podman run` needs besides the image: its options, the command after the image, and
    the memory limit (applied by the caller, through a cgroup it can watch for OOM kills)."""

    options: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    memory_limit: int | None = None
    user: str | None = None  # `--user` as given, None: the image's USER


def _security(pod_spec: Obj, container: Obj) -> Obj:
    """The container's effective securityContext: its own fields over the pod's."""
    pod_ctx = pod_spec.get("securityContext") or {}
    inherited = ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile")
    merged = {k: pod_ctx[k] for k in inherited if k in pod_ctx}
    merged.update(container.get("securityContext") or {})
    return merged


def _security_options(pod_spec: Obj, ctx: Obj) -> tuple[list[str], str | None]:
    opts: list[str] = []
    user = None
    if "runAsUser" in ctx:
        user = str(ctx["runAsUser"]) + (f":{ctx['runAsGroup']}" if "runAsGroup" in ctx else "")
        opts.append(f"--user={user}")
    pod_ctx = pod_spec.get("securityContext") or {}
    groups = [pod_ctx["fsGroup"]] if "fsGroup" in pod_ctx else []
    opts += [f"--group-add={g}" for g in [*groups, *(pod_ctx.get("supplementalGroups") or [])]]
    if ctx.get("readOnlyRootFilesystem"):
        # A kubelet mounts nothing writable by itself: /tmp too needs an emptyDir.
        opts += ["--read-only", "--read-only-tmpfs=false"]
    if ctx.get("allowPrivilegeEscalation") is False:
        opts.append("--security-opt=no-new-privileges")
    if ctx.get("privileged"):
        opts.append("--privileged")
    caps = ctx.get("capabilities") or {}
    opts += [f"--cap-drop={c.lower()}" for c in caps.get("drop") or []]
    opts += [f"--cap-add={c.lower()}" for c in caps.get("add") or []]
    if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
        opts.append("--security-opt=seccomp=unconfined")
    return opts, user


def _check_non_root(ctx: Obj, image_user: str) -> None:
    """The kubelet's runAsNonRoot check (its messages): the uid must be known and not 0."""
    if "runAsUser" in ctx:
        if int(ctx["runAsUser"]) == 0:
            raise PodSpecError("container's runAsUser breaks non-root policy")
        return
    uid = image_user.split(":")[0]
    if not uid.isdigit():
        if uid:
            raise PodSpecError(f"container has runAsNonRoot and image has non-numeric user ({uid}), "
                               "cannot verify user is non-root")
        raise PodSpecError("container has runAsNonRoot and image will run as root")
    if int(uid) == 0:
        raise PodSpecError("container has runAsNonRoot and image will run as root")


def _volume_options(pod_spec: Obj, container: Obj, scratch: Callable[[str], str]) -> list[str]:
    """emptyDir mounts: Memory ones as tmpfs (sizeLimit kept), disk ones as a fresh host folder."""
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    opts: list[str] = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount.get("name"))
        if volume is None:
            raise PodSpecError(f"volume {mount.get('name')!r} not found in the pod's volumes")
        if "emptyDir" not in volume:
            kinds = sorted(set(volume) - {"name"})
            raise PodSpecError(f"volume {volume.get('name')!r}: only emptyDir is supported here, not {kinds}")
        empty = volume.get("emptyDir") or {}
        target = mount["mountPath"]
        readonly = ",ro=true" if mount.get("readOnly") else ""
        if empty.get("medium") == "Memory":
            size = f",tmpfs-size={int(quantity(empty['sizeLimit']))}" if empty.get("sizeLimit") else ""
            opts.append(f"--mount=type=tmpfs,destination={target},tmpfs-mode=1777{size}{readonly}")
        else:
            opts.append(f"--mount=type=bind,source={scratch(volume['name'])},destination={target}{readonly}")
    return opts


def plan_container(
    pod: Obj,
    env_names: Iterable[str],
    *,
    name: str,
    scratch: Callable[[str], str],
    image_user: str = "",
) -> ContainerPlan:
    """`podman run` options for the pod's first container (PodSpecError if it cannot run).

    Kept from the pod spec: command (the entrypoint) and args, env (by name only: the values
    travel in podman's own environment, never on a command line), workingDir, the effective
    securityContext (runAsUser/Group, fsGroup, readOnlyRootFilesystem, allowPrivilegeEscalation,
    capabilities, privileged, runAsNonRoot against `image_user`), the cpu limit, emptyDir volumes.
    The memory limit is returned for the caller's cgroup. The network is the host's: the master's
    address is 127.0.0.1 there.
    `scratch(volume)` gives a host folder for a disk emptyDir.
    """
    spec = pod.get("spec") or {}
    container = (spec.get("containers") or [{}])[0]
    plan = ContainerPlan()
    opts = plan.options
    opts += [f"--name={name}", "--pull=never", "--network=host", f"--hostname={pod['metadata']['name']}"]
    opts += [f"--env={n}" for n in env_names]
    if container.get("workingDir"):
        opts.append(f"--workdir={container['workingDir']}")
    ctx = _security(spec, container)
    security, plan.user = _security_options(spec, ctx)
    opts += security
    if ctx.get("runAsNonRoot"):
        _check_non_root(ctx, image_user)
    limits = (container.get("resources") or {}).get("limits") or {}
    if "cpu" in limits:
        opts.append(f"--cpus={quantity(limits['cpu']):g}")
    if "memory" in limits:
        plan.memory_limit = int(quantity(limits["memory"]))
    opts += _volume_options(spec, container, scratch)
    # Kubernetes: `command` replaces the image's ENTRYPOINT (and drops its CMD), `args` its CMD.
    if container.get("command"):
        opts.append(f"--entrypoint={json.dumps(list(container['command']))}")
    plan.args = [str(a) for a in container.get("args") or []]
    return plan
