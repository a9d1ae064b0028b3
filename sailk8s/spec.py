"""Pydantic models of a pipeline file and its loader. Pure: the only I/O is reading the file."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sailk8s.errors import ConfigError
from sailk8s.stageconfig.registry import STAGE_KINDS as STAGE_KINDS  # re-exported: tests, CLI
from sailk8s.stageconfig.registry import kind as registered_kind

# DNS-1123 label pieces: run and stage names end up in Kubernetes object names and labels.
_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
# Kubernetes resource quantities (e.g. "500m", "4", "16Gi", "1.5").
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*$")


class StrictModel(BaseModel):
    """Base for every spec model: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str, what: str, max_len: int) -> str:
    if len(value) > max_len or not _NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-{max_len} lowercase letters, digits or '-', "
            "start with a letter and end with a letter or digit"
        )
    return value


def _check_quantity(value: str | None) -> str | None:
    if value is not None and not _QUANTITY_RE.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. '500m', '4', '16Gi')")
    return value


class Toleration(StrictModel):
    """A Kubernetes toleration, for tainted GPU node pools."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class Resources(StrictModel):
    """What one stage attempt asks for: nodes x processes, GPUs, CPU, memory, placement."""

    nodes: int = Field(default=1, ge=1, le=1024)
    gpus_per_node: int = Field(default=0, ge=0, le=16)
    # Processes per node when there are no GPUs (local CPU runs); with GPUs it is one per GPU.
    procs_per_node: int = Field(default=1, ge=1, le=64)
    cpu: str | None = "2"
    memory: str | None = "8Gi"
    shm_size: str | None = "2Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    priority_class: str | None = None
    image: str | None = None

    _q_cpu = field_validator("cpu", "memory", "shm_size")(_check_quantity)

    @property
    def nproc_per_node(self) -> int:
        """torchrun's --nproc-per-node: one per GPU, else procs_per_node."""
        return self.gpus_per_node if self.gpus_per_node > 0 else self.procs_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


class RetryPolicy(StrictModel):
    """How the controller retries a failed attempt: exponential backoff, capped."""

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_base_seconds: float = Field(default=10.0, ge=0)
    backoff_cap_seconds: float = Field(default=600.0, ge=0)
    # Infra failures (preemption, eviction, node loss) have their own, larger budget.
    max_infra_retries: int = Field(default=10, ge=0, le=1000)

    @model_validator(mode="after")
    def _cap_above_base(self) -> RetryPolicy:
        if self.backoff_cap_seconds < self.backoff_base_seconds:
            raise ValueError("backoff_cap_seconds must be >= backoff_base_seconds")
        return self

    def delay(self, failures: int) -> float:
        """Seconds to wait before the retry that follows the n-th failure (n >= 1)."""
        return float(min(self.backoff_cap_seconds, self.backoff_base_seconds * 2 ** max(0, failures - 1)))


class Scheduling(StrictModel):
    """Gang scheduling and queueing options for the Kubernetes backend."""

    # Volcano / scheduler-plugins gang: minAvailable defaults to all replicas when gang is on.
    gang: bool = False
    min_available: int | None = Field(default=None, ge=1)
    queue: str | None = None
    priority_class: str | None = None
    kueue_queue: str | None = None
    elastic_min_nodes: int | None = Field(default=None, ge=1)
    elastic_max_nodes: int | None = Field(default=None, ge=1)
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    ttl_seconds_after_finished: int | None = Field(default=86400, ge=0)
    clean_pod_policy: Literal["All", "Running", "None"] = "Running"


class TrainingRuntimeRef(StrictModel):
    """The Trainer v2 runtime a TrainJob runs on: the chart's `sail-torch`, or one the user names."""

    name: str = "sail-torch"
    kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "runtime name", 63)


class KubernetesOptions(StrictModel):
    """Options of `backend: kubernetes`: which job API runs each attempt, and its runtime."""

    # pytorchjob: Kubeflow Training Operator v1 (kubeflow.org/v1 PyTorchJob);
    # trainjob: Kubeflow Trainer v2 (trainer.kubeflow.org/v1alpha1 TrainJob).
    job_api: Literal["pytorchjob", "trainjob"] = "pytorchjob"
    runtime: TrainingRuntimeRef = Field(default_factory=TrainingRuntimeRef)


class Stage(StrictModel):
    """One stage of the pipeline: a workload kind with its data, resources and retry policy."""

    name: str
    kind: str  # a registered kind (sailk8s.stageconfig.registry)
    depends: list[str] = Field(default_factory=list)
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    # Seconds without progress.json advancing before the stage is reported as stalled.
    stall_seconds: float | None = Field(default=1800.0, gt=0)
    restart_on_stall: bool = False
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "stage name", 30)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        return registered_kind(v).name

    @field_validator("inputs", "outputs")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        for p in v:
            if not _PREFIX_RE.match(p) or ".." in p.split("/"):
                raise ValueError(f"{p!r} is not a relative store prefix like 'data/raw'")
        return v

    @model_validator(mode="after")
    def _kind_config(self) -> Stage:
        from sailk8s.stageconfig import parse_stage_config

        parse_stage_config(self.kind, self.config)
        return self

    def typed_config(self) -> BaseModel:
        """The config block parsed into its kind's model (see sailk8s.stageconfig)."""
        from sailk8s.stageconfig import parse_stage_config

        return parse_stage_config(self.kind, self.config)


class Pipeline(StrictModel):
    """A whole pipeline file: run name, backend, store and the stage DAG."""

    run: str
    backend: Literal["local", "kubernetes"] = "local"
    store: str
    namespace: str | None = None
    image: str = "ghcr.io/sail-pipeline/sail-train:0.1.0"
    # Name of the Secret holding store credentials (keys SAIL_STORE_ACCESS_KEY/SECRET_KEY).
    store_secret: str | None = "sail-store-credentials"
    kubernetes: KubernetesOptions = Field(default_factory=KubernetesOptions)
    stages: list[Stage] = Field(min_length=1)

    @field_validator("run")
    @classmethod
    def _run(cls, v: str) -> str:
        return _check_name(v, "run name", 40)

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if v.startswith("file://"):
            if not v[len("file://"):].startswith("/"):
                raise ValueError(f"{v!r}: a file store needs an absolute path, e.g. file:///data/sail")
        elif v.startswith("s3://"):
            bucket = v[len("s3://"):].split("/", 1)[0]
            if not re.match(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$", bucket):
                raise ValueError(f"{v!r}: {bucket!r} is not a valid bucket name")
        else:
            raise ValueError(f"{v!r}: the store must be file:///abs/path or s3://bucket/prefix")
        return v

    @model_validator(mode="after")
    def _dag(self) -> Pipeline:
        problems = list(dag_problems(self.stages))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage named {name!r} in run {self.run!r} "
                          f"(stages: {', '.join(s.name for s in self.stages)})")

    def order(self) -> list[Stage]:
        """Stages in a deterministic topological order (file order among ready stages)."""
        return [self.stage(n) for n in topo_order(self.stages)]

    def fingerprints(self) -> dict[str, str]:
        """Stage name -> hash of what decides its outputs: kind, inputs, outputs, parsed config,
        and its dependencies' fingerprints (so a change upstream changes every stage below it).

        Resources, retries, scheduling and the image are left out: they change how a stage
        runs, not what it writes. Config values equal to their defaults are left out too, so a
        release that adds a config field (whose default keeps the old behaviour) does not make
        every finished run's results look changed.
        """
        out: dict[str, str] = {}
        for stage in self.order():
            doc = {
                "kind": stage.kind,
                "inputs": stage.inputs,
                "outputs": stage.outputs,
                "config": stage.typed_config().model_dump(mode="json", exclude_defaults=True),
                "depends": {d: out[d] for d in sorted(stage.depends)},
            }
            out[stage.name] = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
        return out

    def downstream(self, names: Iterable[str]) -> list[str]:
        """The named stages and every stage that depends on them, directly or not, in run order."""
        picked = set(names)
        for stage in self.order():
            if picked & set(stage.depends):
                picked.add(stage.name)
        return [s.name for s in self.order() if s.name in picked]


def dag_problems(stages: Iterable[Stage]) -> Iterable[str]:
    """Duplicate names, unknown dependencies and cycles, one message each."""
    stages = list(stages)
    seen: set[str] = set()
    for i, s in enumerate(stages):
        if s.name in seen:
            yield f"stages[{i}].name: duplicate stage name {s.name!r}"
        seen.add(s.name)
    for i, s in enumerate(stages):
        for d in s.depends:
            if d not in seen:
                yield f"stages[{i}].depends: unknown stage {d!r}"
            if d == s.name:
                yield f"stages[{i}].depends: stage {s.name!r} depends on itself"
    cycle = find_cycle(stages)
    if cycle:
        yield "stages: dependency cycle " + " -> ".join(cycle)


def find_cycle(stages: list[Stage]) -> list[str] | None:
    """One dependency cycle as a list of names (first repeated at the end), or None."""
    deps = {s.name: [d for d in s.depends if d != s.name] for s in stages}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for d in deps.get(n, []):
            if d not in deps:
                continue
            if state.get(d) == 1:
                return [*path[path.index(d):], d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for s in stages:
        if s.name not in state:
            found = visit(s.name)
            if found:
                return found
    return None


def topo_order(stages: list[Stage]) -> list[str]:
    """Kahn's algorithm, ties broken by file order so the order is stable."""
    remaining = {s.name: set(s.depends) for s in stages}
    order: list[str] = []
    while remaining:
        ready = [s.name for s in stages if s.name in remaining and not remaining[s.name]]
        if not ready:
            raise ConfigError("dependency cycle among " + ", ".join(sorted(remaining)))
        for n in ready:
            del remaining[n]
            order.append(n)
        for d in remaining.values():
            d.difference_update(ready)
    return order


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(err: ValidationError) -> list[str]:
    """One readable line per problem, each naming its field path."""
    lines: list[str] = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        where = _loc(tuple(e["loc"]))
        if msg.startswith(("config.", "config:")):
            # A stage's config block reports "config.<field>: <msg>; ..." (sailk8s.stageconfig).
            lines.extend(f"{where}.{part}" for part in msg.split("; "))
            continue
        lines.append(f"{where}: {msg}")
    return lines


def parse_pipeline(data: Any, base_dir: Path | None = None) -> Pipeline:
    """Validate parsed YAML into a Pipeline; raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError("the pipeline file must be a YAML mapping with run, store and stages")
    store = data.get("store")
    # Relative file stores (file://./x) are resolved against the pipeline file's folder.
    if isinstance(store, str) and store.startswith(("file://./", "file://../")) and base_dir:
        data = {**data, "store": "file://" + str((base_dir / store[len("file://"):]).resolve())}
    try:
        return Pipeline.model_validate(data)
    except ValidationError as err:
        problems = format_validation_error(err)
        raise ConfigError(problems[0] if len(problems) == 1 else
                          f"{len(problems)} problems: " + "; ".join(problems), problems) from None


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such pipeline file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: cannot read pipeline file: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    try:
        return parse_pipeline(data, base_dir=p.resolve().parent)
    except ConfigError as err:
        raise ConfigError(f"{p}: {err}", [f"{p}: {x}" for x in err.problems]) from None
