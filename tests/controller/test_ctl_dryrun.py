"""`run --dry-run`: the plan read from the store and the file, and nothing written anywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from ctl_support import sail, write_pipeline


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under the roots with its size and mtime (ns)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")) if root.exists() else []:
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def plan_rows(stdout: str) -> dict[str, list[str]]:
    rows = [line.split(None, 3) for line in stdout.splitlines()[1:]]
    return {r[0]: r[1:] for r in rows}


@pytest.mark.slow
def test_dry_run_plans_from_the_store_and_writes_nothing(tmp_path: Path, local_env: dict[str, Path]) -> None:
    path = write_pipeline(tmp_path, local_env["store"])
    fresh = sail("run", "-f", str(path), "--dry-run")
    assert fresh.returncode == 0, fresh.stderr
    assert {k: v[:2] for k, v in plan_rows(fresh.stdout).items()} == {
        "a": ["run", "r1-a-1"], "c": ["run", "r1-c-1"], "b": ["run", "r1-b-1"]}
    assert not local_env["store"].exists() or not any(local_env["store"].rglob("*.json"))
    assert sail("run", "-f", str(path)).returncode == 0
    shorter = {"config": {"preset": "tiny", "max_new_tokens": 8}}
    changed = write_pipeline(tmp_path, local_env["store"], b=shorter)
    before = snapshot(local_env["store"], local_env["local"])
    plan = sail("run", "-f", str(changed), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    rows = plan_rows(plan.stdout)
    assert rows["a"][0] == "skip" and rows["c"][0] == "skip"
    assert rows["b"][0] == "refused" and "--rerun b" in rows["b"][2]
    redo = plan_rows(sail("run", "-f", str(changed), "--dry-run", "--rerun", "a").stdout)
    assert {k: v[:2] for k, v in redo.items()} == {"a": ["rerun", "r1-a-2"], "b": ["rerun", "r1-b-2"],
                                                  "c": ["skip", "-"]}
    assert snapshot(local_env["store"], local_env["local"]) == before  # nothing written


@pytest.mark.parametrize(("job_api", "kind"), [("pytorchjob", "PyTorchJob"), ("trainjob", "TrainJob")])
def test_dry_run_yaml_prints_each_job_and_reaches_no_api(
    tmp_path: Path, local_env: dict[str, Path], job_api: str, kind: str
) -> None:
    store = local_env["store"]
    pipeline = tmp_path / "k8s.yaml"
    pipeline.write_text(yaml.safe_dump({
        "run": "r1", "backend": "kubernetes", "store": f"file://{store}", "namespace": "sail",
        "kubernetes": {"job_api": job_api},
        "stages": [{"name": "a", "kind": "ingest", "outputs": ["data/a"]},
                   {"name": "b", "kind": "filter", "depends": ["a"], "inputs": ["data/a"]}]}))
    env_before = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(tmp_path / "no-such-kubeconfig")  # any API call would fail
    try:
        res = sail("run", "-f", str(pipeline), "--dry-run", "-o", "yaml")
    finally:
        if env_before is None:
            os.environ.pop("KUBECONFIG")
        else:
            os.environ["KUBECONFIG"] = env_before
    assert res.returncode == 0, res.stderr
    jobs = list(yaml.safe_load_all(res.stdout))
    assert [(j["kind"], j["metadata"]["name"]) for j in jobs] == [(kind, "r1-a-1"), (kind, "r1-b-1")]
    assert f"2 {kind}(s) would be submitted" in res.stderr and "nothing was written" in res.stderr
    assert snapshot(store) == {}
