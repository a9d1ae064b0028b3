"""Invariants of a finished chaos run, checked against a fault-free reference run."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sailk8s.ledger.runstate import RunState, load_state
from sailk8s.spec import Pipeline
from sailk8s.store.base import ObjectStore

WEIGHTS_TOLERANCE = 1e-5  # absolute, per value, for float weights that differ bit-wise
# Per stage, one entry per attempt a fault may end: the failure classes it may show.
Allowed = dict[str, list[frozenset[str]]]


@dataclass
class Snapshot:
    """A run's results as read from its store: output digests, markers, reports, run state."""

    outputs: dict[str, str]  # key -> sha256 of every object under the stages' outputs
    markers: dict[str, dict[str, Any]]  # done-marker key -> marker (without its time)
    reports: dict[str, dict[str, Any]]  # stage -> report.json
    state: RunState | None
    weights: dict[str, bytes] = field(default_factory=dict)  # *.safetensors key -> bytes
    keys: dict[str, list[str]] = field(default_factory=dict)  # output prefix -> sample keys, in order


def _sample_keys(data: bytes) -> list[str]:
    """The sample keys of a WebDataset shard (each member's name up to its first dot)."""
    keys: list[str] = []
    seen: set[str] = set()  # member names of the current sample: a repeated one starts a new sample
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            key = member.name.split(".", 1)[0]
            if not keys or keys[-1] != key or member.name in seen:
                keys.append(key)
                seen = set()
            seen.add(member.name)
    return keys


def snapshot(store: ObjectStore, pipeline: Pipeline) -> Snapshot:
    """Read what `pipeline`'s run left in `store`."""
    outputs: dict[str, str] = {}
    weights: dict[str, bytes] = {}
    keys: dict[str, list[str]] = {}
    for stage in pipeline.stages:
        for prefix in stage.outputs:
            for key in sorted(store.list(prefix.rstrip("/") + "/")):
                data = store.get(key)
                outputs[key] = hashlib.sha256(data).hexdigest()
                if key.endswith(".safetensors"):
                    weights[key] = data
                elif key.endswith(".tar"):
                    keys.setdefault(prefix, []).extend(_sample_keys(data))
    markers: dict[str, dict[str, Any]] = {}
    reports: dict[str, dict[str, Any]] = {}
    root = f"runs/{pipeline.run}"
    for stage in pipeline.stages:
        for key in sorted(store.list(f"{root}/{stage.name}/done/")):
            marker = json.loads(store.get(key))
            markers[key] = {k: v for k, v in marker.items() if k not in ("time", "attempt")}
        if store.exists(f"{root}/{stage.name}/report.json"):
            reports[stage.name] = json.loads(store.get(f"{root}/{stage.name}/report.json"))
    return Snapshot(outputs, markers, reports, load_state(store, pipeline.run), weights, keys)


def _tensors(data: bytes) -> dict[str, tuple[str, bytes]]:
    """A safetensors file's tensors: name -> (dtype, raw bytes)."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    body = data[8 + size:]
    return {name: (meta["dtype"], body[meta["data_offsets"][0]:meta["data_offsets"][1]])
            for name, meta in header.items() if name != "__metadata__"}


def weights_close(a: bytes, b: bytes, tol: float = WEIGHTS_TOLERANCE) -> str | None:
    """None when two safetensors files hold the same tensors within `tol`, else what differs."""
    ta, tb = _tensors(a), _tensors(b)
    if sorted(ta) != sorted(tb):
        return "different tensor names"
    for name, (dtype, raw) in ta.items():
        if tb[name][0] != dtype:
            return f"{name}: dtype {dtype} vs {tb[name][0]}"
        if raw == tb[name][1]:
            continue
        if dtype != "F32":
            return f"{name}: {dtype} bytes differ"
        xa, xb = array("f", raw), array("f", tb[name][1])
        worst = max(abs(x - y) for x, y in zip(xa, xb, strict=True))
        if worst > tol:
            return f"{name}: differs by up to {worst:g}"
    return None


def compare_outputs(ref: Snapshot, run: Snapshot) -> list[str]:
    """Outputs byte-identical (weights within tolerance), the same markers with the same digests."""
    bad = []
    if sorted(ref.outputs) != sorted(run.outputs):
        missing = sorted(set(ref.outputs) - set(run.outputs))[:5]
        extra = sorted(set(run.outputs) - set(ref.outputs))[:5]
        bad.append(f"output keys differ: missing {missing}, extra {extra}")
    for key, digest in ref.outputs.items():
        if key in run.outputs and run.outputs[key] != digest:
            if key in ref.weights and key in run.weights:
                why = weights_close(ref.weights[key], run.weights[key])
                if why:
                    bad.append(f"{key}: weights differ beyond tolerance: {why}")
            else:
                bad.append(f"{key}: bytes differ from the reference run")
    if sorted(ref.markers) != sorted(run.markers):
        bad.append(f"done markers differ: {sorted(set(ref.markers) ^ set(run.markers))[:5]}")
    for key, marker in ref.markers.items():
        if key in run.markers and run.markers[key] != marker:
            bad.append(f"{key}: marker {run.markers[key]} != reference {marker}")
    return bad


def check_accounting(run: Snapshot, pipeline: Pipeline) -> list[str]:
    """Per data stage: samples_in == kept + dropped, and no sample key written twice."""
    bad = []
    for stage in pipeline.stages:
        report = run.reports.get(stage.name)
        if report is None:
            bad.append(f"{stage.name}: no report")
            continue
        if "kept" in report and "samples_in" in report:
            dropped = report.get("dropped_total", sum(report.get("dropped", {}).values()))
            if report["samples_in"] != report["kept"] + dropped:
                bad.append(f"{stage.name}: samples_in {report['samples_in']} != kept {report['kept']}"
                           f" + dropped {dropped}")
        for prefix in stage.outputs:
            keys = run.keys.get(prefix, [])
            twice = [k for k, n in Counter(keys).items() if n > 1]
            if twice:
                bad.append(f"{stage.name}: sample keys written twice under {prefix}: {twice[:5]}")
            if keys and "kept" in report and len(keys) != report["kept"]:
                bad.append(f"{stage.name}: {len(keys)} samples under {prefix},"
                           f" report says kept {report['kept']}")
    return bad


def check_attempts(state: RunState | None, pipeline: Pipeline, allowed: Allowed) -> list[str]:
    """Attempts within the retry policy; at most one failure per fault that may end one, of its class."""
    if state is None:
        return ["no run state"]
    bad = []
    for stage in pipeline.stages:
        st = state.stages.get(stage.name)
        if st is None:
            bad.append(f"{stage.name}: not in the run state")
            continue
        policy = stage.retry
        if st.app_failures > policy.max_attempts or st.infra_failures > policy.max_infra_retries + 1:
            bad.append(f"{stage.name}: {st.app_failures} app / {st.infra_failures} infra failures"
                       f" beyond the policy {policy}")
        if len(st.attempts) > policy.max_attempts + policy.max_infra_retries:
            bad.append(f"{stage.name}: {len(st.attempts)} attempts beyond the policy")
        faults = allowed.get(stage.name, [])
        ok = set().union(*faults) if faults else set()
        failed = [att for att in st.attempts if att.failure is not None]
        for att in failed:
            if str(att.failure) not in ok:
                bad.append(f"{stage.name} attempt {att.attempt}: {att.failure} ({att.reason}: {att.message},"
                           f" exit {att.exit_code}) where its faults allow {sorted(ok)}")
        if len(failed) > len(faults):
            bad.append(f"{stage.name}: {len(failed)} failed attempts, {len(faults)} faults that may end one")
    return bad


def check_names(submitted: list[str]) -> list[str]:
    """No attempt (PyTorchJob) name submitted twice."""
    twice = [n for n, c in Counter(submitted).items() if c > 1]
    return [f"attempt names reused: {twice}"] if twice else []
