"""The pipeline spec: valid files load, every invalid field is named, DAG errors are caught."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from sailk8s.errors import ConfigError
from sailk8s.settings import Settings
from sailk8s.spec import load_pipeline, parse_pipeline, topo_order


def _pipeline(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "run": "r1",
        "store": "file:///tmp/sail-store",
        "stages": [
            {"name": "caption", "kind": "caption", "outputs": ["data/captioned"],
             "config": {"model": "models/captioner"}},
            {"name": "filter", "kind": "filter", "depends": ["caption"],
             "inputs": ["data/captioned"], "outputs": ["data/filtered"]},
        ],
    }
    base.update(over)
    return base


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(data)
    return info.value.problems


def test_valid_pipeline_orders_stages_and_applies_defaults() -> None:
    p = parse_pipeline(_pipeline())
    assert [s.name for s in p.order()] == ["caption", "filter"]
    assert p.backend == "local"
    caption = p.stage("caption")
    assert caption.resources.nodes == 1 and caption.retry.max_attempts == 3


def test_topological_order_follows_depends_not_file_order() -> None:
    stages = [SimpleNamespace(name=n, depends=d) for n, d in
              [("c", ["b"]), ("a", []), ("b", ["a"]), ("d", ["a"])]]
    assert topo_order(stages) == ["a", "b", "d", "c"]  # type: ignore[arg-type]


def test_stage_config_problems_name_the_field() -> None:
    data = _pipeline()
    data["stages"][1]["config"] = {"no_such_filter_option": 1}
    assert any(p.startswith("stages[1].config.no_such_filter_option") for p in _problems(data))


def test_unknown_fields_are_rejected_with_their_path() -> None:
    data = _pipeline()
    data["stages"][1]["resources"] = {"gpus": 8}
    data["colour"] = "blue"
    problems = _problems(data)
    assert "stages[1].resources.gpus: unknown field" in problems
    assert "colour: unknown field" in problems


def test_wrong_types_name_the_field() -> None:
    data = _pipeline()
    data["stages"][0]["resources"] = {"gpus_per_node": "eight", "memory": "lots"}
    problems = _problems(data)
    assert any(p.startswith("stages[0].resources.gpus_per_node:") for p in problems)
    assert any(p.startswith("stages[0].resources.memory:") and "quantity" in p for p in problems)


@pytest.mark.parametrize(
    ("stages", "needle"),
    [
        ([{"name": "a", "kind": "ingest", "depends": ["b"]},
          {"name": "b", "kind": "filter", "depends": ["a"]}], "dependency cycle a -> b -> a"),
        ([{"name": "a", "kind": "ingest", "depends": ["ghost"]}], "unknown stage 'ghost'"),
        ([{"name": "a", "kind": "ingest"}, {"name": "a", "kind": "filter"}], "duplicate stage name 'a'"),
        ([{"name": "a", "kind": "ingest", "depends": ["a"]}], "depends on itself"),
    ],
)
def test_dag_problems(stages: list[dict[str, Any]], needle: str) -> None:
    assert any(needle in p for p in _problems(_pipeline(stages=stages)))


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("store", "file://relative/path", "absolute path"),
        ("store", "gs://bucket/x", "file:///abs/path or s3://bucket/prefix"),
        ("store", "s3://Bad_Bucket/x", "not a valid bucket name"),
        ("run", "Run_1", "run name"),
        ("backend", "slurm", "backend"),
    ],
)
def test_top_level_values_are_checked(field: str, value: str, needle: str) -> None:
    problems = _problems(_pipeline(**{field: value}))
    assert any(needle in p for p in problems), problems


def test_unknown_kind_and_bad_prefix() -> None:
    data = _pipeline()
    data["stages"][0]["kind"] = "train"
    data["stages"][1]["inputs"] = ["../escape"]
    problems = _problems(data)
    assert any(p.startswith("stages[0].kind:") for p in problems)
    assert any(p.startswith("stages[1].inputs:") for p in problems)


def test_retry_policy_backoff_is_exponential_and_capped() -> None:
    data = _pipeline()
    data["stages"][0]["retry"] = {"backoff_base_seconds": 5, "backoff_cap_seconds": 30}
    retry = parse_pipeline(data).stage("caption").retry
    assert [retry.delay(n) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 30, 30]
    data["stages"][0]["retry"] = {"backoff_base_seconds": 50, "backoff_cap_seconds": 30}
    assert any("backoff_cap_seconds" in p for p in _problems(data))


def test_resources_world_size() -> None:
    data = _pipeline()
    data["stages"][0]["resources"] = {"nodes": 4, "gpus_per_node": 8}
    data["stages"][1]["resources"] = {"procs_per_node": 2}
    p = parse_pipeline(data)
    assert p.stage("caption").resources.world_size == 32
    assert p.stage("filter").resources.nproc_per_node == 2


def test_load_pipeline_reports_yaml_errors_with_line(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("run: r1\nstages:\n  - name: a\n   kind: caption\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(f)
    assert "invalid YAML at line" in str(info.value)
    with pytest.raises(ConfigError, match="no such pipeline file"):
        load_pipeline(tmp_path / "missing.yaml")


def test_relative_file_store_resolves_against_the_pipeline_file(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("run: r1\nstore: file://./store\nstages:\n  - {name: a, kind: ingest}\n")
    assert load_pipeline(f).store == f"file://{tmp_path / 'store'}"


def test_unknown_stage_lookup_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no stage named 'nope'"):
        parse_pipeline(_pipeline()).stage("nope")


def test_credentials_never_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIL_STORE_ACCESS_KEY", "AKIA-very-secret")
    monkeypatch.setenv("SAIL_STORE_SECRET_KEY", "hunter2-secret")
    s = Settings()
    assert isinstance(s.store_secret_key, SecretStr)
    assert s.store_secret_key.get_secret_value() == "hunter2-secret"
    for text in (repr(s), str(s), str(s.model_dump())):
        assert "hunter2-secret" not in text and "AKIA-very-secret" not in text


def test_job_api_defaults_to_pytorchjob_and_names_bad_values() -> None:
    p = parse_pipeline(_pipeline())
    assert p.kubernetes.job_api == "pytorchjob"
    assert (p.kubernetes.runtime.name, p.kubernetes.runtime.kind) == ("sail-torch", "ClusterTrainingRuntime")
    t = parse_pipeline(_pipeline(kubernetes={"job_api": "trainjob", "runtime": {"name": "team-torch",
                                                                                 "kind": "TrainingRuntime"}}))
    assert t.kubernetes.job_api == "trainjob" and t.kubernetes.runtime.kind == "TrainingRuntime"
    for bad, where in [({"job_api": "mpijob"}, "kubernetes.job_api"),
                       ({"runtime": {"kind": "Runtime"}}, "kubernetes.runtime.kind"),
                       ({"runtime": {"name": "Bad_Name"}}, "kubernetes.runtime.name")]:
        with pytest.raises(ConfigError) as info:
            parse_pipeline(_pipeline(kubernetes=bad))
        assert str(info.value).startswith(where), str(info.value)
