"""The env contract between the controller and a stage attempt's processes. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sailk8s.spec import Pipeline, Stage
from sailk8s.stageconfig.registry import kind as registered_kind

RUN = "SAIL_RUN"
RUN_ID = "SAIL_RUN_ID"  # the run's identity in the store (several runs may share a name)
STAGE = "SAIL_STAGE"
KIND = "SAIL_STAGE_KIND"
ATTEMPT = "SAIL_ATTEMPT"
STORE_URI = "SAIL_STORE_URI"
INPUTS = "SAIL_INPUTS"  # JSON list of store prefixes
OUTPUTS = "SAIL_OUTPUTS"  # JSON list of store prefixes
CONFIG = "SAIL_STAGE_CONFIG"  # JSON object: the stage's config block
# Store credentials travel separately (a Secret in the cluster, the parent env locally).
CREDENTIAL_VARS = ("SAIL_STORE_ACCESS_KEY", "SAIL_STORE_SECRET_KEY")
STORE_VARS = ("SAIL_STORE_ENDPOINT", "SAIL_STORE_REGION", *CREDENTIAL_VARS)
LAUNCHER = "jobs.launch"  # torchrun that keeps the failed rank's exit code (jobs/launch.py)


def stage_env(pipeline: Pipeline, stage: Stage, attempt: int, run_id: str = "") -> dict[str, str]:
    """Environment describing one attempt, without credentials (safe to print or render)."""
    return {
        **({RUN_ID: run_id} if run_id else {}),
        RUN: pipeline.run,
        STAGE: stage.name,
        KIND: stage.kind,
        ATTEMPT: str(attempt),
        STORE_URI: pipeline.store,
        INPUTS: json.dumps(stage.inputs),
        OUTPUTS: json.dumps(stage.outputs),
        CONFIG: json.dumps(stage.config, sort_keys=True),
    }


def stage_command(stage: Stage, *, nnodes: int | None = None) -> list[str]:
    """The attempt's command: torchrun over the kind's workload module, same locally and in a pod.

    In a pod the training operator sets MASTER_ADDR/PORT, WORLD_SIZE and RANK (node rank)
    and PET_NPROC_PER_NODE/PET_NNODES, which torchrun reads; locally the backend passes
    --standalone. The arguments here are the parts both share.
    """
    nproc = stage.resources.nproc_per_node
    cmd = ["torchrun", f"--nproc-per-node={nproc}"]
    if nnodes is not None:
        cmd.append(f"--nnodes={nnodes}")
    return [*cmd, "-m", registered_kind(stage.kind).workload]


def launch_command(stage: Stage, *, nnodes: int | None = None) -> list[str]:
    """What a pod and a local attempt run: stage_command's torchrun arguments under jobs.launch.

    torchrun exits 1 whatever its ranks returned; `python -m jobs.launch` is torchrun exiting
    with the first failed rank's own code, which restartPolicy ExitCode and the controller's
    failure classes depend on.
    """
    return ["python", "-m", LAUNCHER, *stage_command(stage, nnodes=nnodes)[1:]]


@dataclass(frozen=True)
class StageContext:
    """What a workload process learns from its environment."""

    run: str
    stage: str
    kind: str
    attempt: int
    store_uri: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StageContext:
        """Parse the contract; a missing or malformed variable raises ValueError naming it."""
        missing = [v for v in (RUN, STAGE, KIND, STORE_URI) if not env.get(v)]
        if missing:
            raise ValueError("missing environment variable(s): " + ", ".join(missing))

        def load(var: str, default: str) -> Any:
            try:
                return json.loads(env.get(var) or default)
            except json.JSONDecodeError as err:
                raise ValueError(f"{var} is not valid JSON: {err}") from None

        try:
            attempt = int(env.get(ATTEMPT, "1"))
        except ValueError:
            raise ValueError(f"{ATTEMPT} must be an integer, got {env.get(ATTEMPT)!r}") from None
        return cls(
            run=env[RUN], stage=env[STAGE], kind=env[KIND], attempt=attempt, run_id=env.get(RUN_ID, ""),
            store_uri=env[STORE_URI], inputs=load(INPUTS, "[]"), outputs=load(OUTPUTS, "[]"),
            config=load(CONFIG, "{}"),
        )
