"""Paths, values sets and render helpers shared by the chart tests (no Helm engine here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "sail-pipeline"
CI_DIR = CHART_DIR / "ci"
RELEASE = "sail-pipeline"
NAMESPACE = "sail"

Objects = list[dict[str, Any]]


def ci_values() -> dict[str, dict[str, Any]]:
    """The realistic values files under helm/sail-pipeline/ci, by file stem."""
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(CI_DIR.glob("*.yaml"))}


# "default" renders values.yaml alone; the others layer a ci/ file on top of it.
VALUE_SETS: dict[str, dict[str, Any]] = {"default": {}, **ci_values()}


def parse_render(rendered: dict[str, str]) -> Objects:
    """All objects of a render (NOTES.txt excluded), in a stable order."""
    objects: Objects = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(rendered[path]) if doc)
    return objects


def is_hook(obj: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (obj["metadata"].get("annotations") or {})


def find(objects: Objects, kind: str, component: str | None = None) -> Objects:
    """Objects of a kind, optionally with a given app.kubernetes.io/component label."""
    return [o for o in objects if o["kind"] == kind and (
        component is None or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]
