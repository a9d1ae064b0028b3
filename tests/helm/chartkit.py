"""Paths, values sets and render helpers shared by the chart tests (no Helm engine here)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from sailk8s.spec import Pipeline, parse_pipeline

ROOT = Path(__file__).resolve().parents[2]
# The chart -> objects parsing the manifests generator uses; the tests use the same one.
sys.path.insert(0, str(ROOT / "scripts"))
from gen_manifests import NAMESPACE as NAMESPACE  # noqa: E402
from gen_manifests import RELEASE as RELEASE  # noqa: E402
from gen_manifests import is_hook as is_hook  # noqa: E402
from gen_manifests import parse_render as parse_render  # noqa: E402

sys.path.pop(0)
CHART_DIR = ROOT / "helm" / "sail-pipeline"
CI_DIR = CHART_DIR / "ci"

Objects = list[dict[str, Any]]


def ci_values() -> dict[str, dict[str, Any]]:
    """The realistic values files under helm/sail-pipeline/ci, by file stem."""
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(CI_DIR.glob("*.yaml"))}


# "default" renders values.yaml alone; the others layer a ci/ file on top of it.
VALUE_SETS: dict[str, dict[str, Any]] = {"default": {}, **ci_values()}


def find(objects: Objects, kind: str, component: str | None = None) -> Objects:
    """Objects of a kind, optionally with a given app.kubernetes.io/component label."""
    return [o for o in objects if o["kind"] == kind and (
        component is None or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]


# The Kubernetes versions the rendered chart is validated against (oldest first).
SUPPORTED = ("1.27", "1.33")

# The smallest valid config block of each kind (the kinds without required fields take {}).
MINIMAL_CONFIG: dict[str, dict[str, Any]] = {
    "caption": {"model": "models/captioner"},
    "pretrain": {"substages": [{"name": "a", "mix": [{"prefix": "d"}], "max_steps": 1}]},
    "sft": {"stages": [{"name": "a", "mix": [{"prefix": "d"}], "max_steps": 1}]},
    "evaluate": {"model": "models/sft"},
}
KIND_IMAGE = {"ingest": "sail-filter", "caption": "sail-caption", "filter": "sail-filter",
              "pretrain": "sail-train", "sft": "sail-train", "evaluate": "sail-train"}


def pipeline_of(objects: list[dict[str, Any]]) -> Pipeline:
    """The pipeline file in the rendered ConfigMap, validated like `sailk8s validate -f`."""
    (cm,) = find(objects, "ConfigMap")
    return parse_pipeline(yaml.safe_load(cm["data"]["pipeline.yaml"]))
