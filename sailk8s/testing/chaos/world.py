"""A chaos scenario's world: an S3 server behind a fault proxy, the fake cluster, tagged processes."""

from __future__ import annotations

import base64
import contextlib
import copy
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sailk8s.envcontract import CREDENTIAL_VARS
from sailk8s.spec import Pipeline, parse_pipeline
from sailk8s.store.base import ObjectStore
from sailk8s.testing.apiserver import FakeKubernetes
from sailk8s.testing.chaos.catalogue import CONTAINERS, KUBE
from sailk8s.testing.containers import ci_image
from sailk8s.testing.operator import FakeTrainingOperator
from sailk8s.testing.s3 import FaultProxy, S3Server, s3_server
from sailk8s.testing.waiting import until_empty

NAMESPACE = "sail"
SECRET = "sail-store"
BUCKET = "sail"
TAG_VAR = "SAIL_CHAOS_TAG"  # every process of a scenario carries it: how leftovers are found


@dataclass
class Proc:
    """A process of the scenario, found by its tag."""

    pid: int
    argv: list[str]
    env: dict[str, str]

    @property
    def stage(self) -> str | None:
        """The stage it works for (None for a controller)."""
        return self.env.get("SAIL_STAGE")

    @property
    def is_python(self) -> bool:
        """A Python process (a container's podman client and conmon carry the tag too)."""
        return bool(self.argv) and os.path.basename(self.argv[0]).startswith("python")

    @property
    def is_rank(self) -> bool:
        """A rank: runs a `jobs.<kind>` workload (not the launcher, not torchrun)."""
        mods = [self.argv[i + 1] for i, a in enumerate(self.argv[:-1]) if a == "-m"]
        if not mods or "RANK" not in self.env or not self.is_python:
            return False
        return mods[-1].startswith("jobs.") and mods[-1] != "jobs.launch"

    @property
    def is_launcher(self) -> bool:
        """The attempt's `jobs.launch` process."""
        return self.is_python and "jobs.launch" in self.argv


def tagged(tag: str) -> list[Proc]:
    """Every live process whose environment carries `TAG_VAR=tag`."""
    want = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            raw = (entry / "environ").read_bytes().split(b"\0")
            if want not in raw:
                continue
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            env = dict(e.decode(errors="replace").split("=", 1) for e in raw if b"=" in e)
            found.append(Proc(int(entry.name), argv, env))
    return found


def chaos_pipeline(backend: str, run: str = "chaos") -> dict[str, Any]:
    """The chaos pipeline: ingest -> captioner (tiny sft, 3 checkpoints) and filter (image + dedup).
    For CONTAINERS each stage names its CI image (ingest and filter sail-filter, the sft sail-train)."""
    retry = {"max_attempts": 3, "backoff_base_seconds": 0.5, "backoff_cap_seconds": 2, "max_infra_retries": 6}
    samples = {"raw_digits": 24, "reference_digits": 16, "reference_photos": 0, "sft_knowledge_digits": 0,
               "sft_instruction_digits": 0, "eval_digits": 1, "duplicates": 4, "thumbnails": 2}
    data_res = {"procs_per_node": 2, "cpu": "1", "memory": "1Gi"}
    doc: dict[str, Any] = {"run": run, "backend": backend, "store": f"s3://{BUCKET}", "stages": [
        {"name": "ingest", "kind": "ingest", "outputs": ["data/samples"], "resources": data_res,
         "retry": retry, "config": {"source": "samples", "shard_size": 4, "sets": ["raw", "reference"],
                                    "samples": samples}},
        {"name": "captioner", "kind": "sft", "depends": ["ingest"], "inputs": ["data/samples/reference"],
         "outputs": ["models/captioner"], "retry": retry,
         "resources": {"procs_per_node": 1, "cpu": "1", "memory": "2Gi"},
         "config": {"model": {"preset": "tiny"}, "seq_len": 128, "deepspeed": False, "checkpoint_every": 3,
                    "stages": [{"name": "captions", "max_steps": 9, "global_batch": 4, "micro_batch": 4,
                                "mix": [{"prefix": "data/samples/reference", "format": "caption",
                                         "text_fields": ["caption"], "prompt": "Describe."}]}]}},
        {"name": "filter", "kind": "filter", "depends": ["ingest"], "inputs": ["data/samples/raw"],
         "outputs": ["data/filtered"], "resources": data_res, "retry": retry,
         "config": {"text_fields": ["alt_text"], "filters": [
             {"type": "image", "min_side": 32, "max_aspect_ratio": 3.0},
             {"type": "dedup", "exact": True, "near": True, "max_distance": 2}]}},
    ]}
    if backend == CONTAINERS:
        for stage in doc["stages"]:
            stage["resources"]["image"] = ci_image("train" if stage["kind"] == "sft" else "filter")
        doc["image"] = ci_image("train")
    return adapt(doc, backend)


def adapt(doc: dict[str, Any], backend: str) -> dict[str, Any]:
    """A pipeline document pointed at a world: its bucket as the store, its cluster's namespace
    (for CONTAINERS the stages must name images that podman has)."""
    out = copy.deepcopy(doc)
    out.update(backend=KUBE if backend == CONTAINERS else backend, store=f"s3://{BUCKET}")
    if backend in (KUBE, CONTAINERS):
        out.update(namespace=NAMESPACE, store_secret=SECRET)
    return out


@dataclass
class World:
    """One scenario's servers and processes; `store` reads behind the proxy's back (never faulted)."""

    workdir: Path
    backend: str
    s3: S3Server
    proxy: FaultProxy
    root: Path  # the repository root (cwd and PYTHONPATH of every process)
    kube: FakeKubernetes | None = None
    operator: FakeTrainingOperator | None = None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    controllers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def store(self) -> ObjectStore:
        """The bucket, straight to the S3 server."""
        return self.s3.store()  # type: ignore[no-any-return]

    def write_pipeline(self, doc: dict[str, Any]) -> tuple[Path, Pipeline]:
        """Write the pipeline file; returns its path and the parsed pipeline."""
        path = self.workdir / "pipeline.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path, parse_pipeline(doc)

    def env(self) -> dict[str, str]:
        """The controller's environment: the store through the proxy, this world's tag."""
        env = os.environ.copy()
        env.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")])),
                    "OMP_NUM_THREADS": "1", "SAIL_LOG_FORMAT": "json", TAG_VAR: self.tag,
                    "SAIL_LOCAL_DIR": str(self.workdir / "local"), "SAIL_STORE_ENDPOINT": self.proxy.endpoint,
                    "SAIL_STORE_ACCESS_KEY": self.s3.access_key, "SAIL_STORE_SECRET_KEY": self.s3.secret_key,
                    "SAIL_STORE_REGION": self.s3.region, "SAIL_STORE_RETRY_SECONDS": "30",
                    "SAIL_PROGRESS_SECONDS": "0.5", "SAIL_LEASE_SECONDS": "2"})
        if self.kube is not None:
            env["KUBECONFIG"] = str(self.kube.kubeconfig(self.workdir / "kubeconfig", namespace=NAMESPACE))
        return env

    def start_controller(self, path: Path, *extra: str) -> subprocess.Popen[bytes]:
        """Start `python -m sailk8s run -f PATH` (output to controller-N.log)."""
        log = (self.workdir / f"controller-{len(self.controllers) + 1}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "sailk8s", "run", "-f", str(path), *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.root)
        log.close()
        self.controllers.append(proc)
        return proc

    def logs(self) -> list[str]:
        """Every controller's output, in start order."""
        return [p.read_text(errors="replace") for p in sorted(self.workdir.glob("controller-*.log"),
                                                              key=lambda p: int(p.stem.split("-")[1]))]

    def leftovers(self, wait: float = 60.0) -> list[Proc]:
        """Tagged processes still alive after `wait` seconds (returns as soon as none is: the wait
        is a guard against a busy machine's slow exits, not a bound)."""
        return until_empty(lambda: tagged(self.tag), wait)

    def kill_all(self) -> None:
        """Kill this world's controllers and every tagged process (by pid)."""
        for proc in self.controllers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for left in tagged(self.tag):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(left.pid, signal.SIGKILL)


@contextlib.contextmanager
def world(workdir: Path, backend: str, root: Path) -> Iterator[World]:
    """Start a fresh S3 server (bucket `sail`) behind a fault proxy and, for Kubernetes, the fake cluster
    (for CONTAINERS in container mode: each pod a podman container of its own image)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with s3_server(BUCKET) as s3, FaultProxy(s3.endpoint) as proxy:
        w = World(workdir, backend, s3, proxy, root)
        store = w.store
        for key in list(store.list("")):  # moto's state is per process: empty what an earlier world left
            store.delete(key)
        try:
            if backend not in (KUBE, CONTAINERS):
                yield w
                return
            with FakeKubernetes(namespaces=(NAMESPACE,)) as kube:
                creds = {"SAIL_STORE_ACCESS_KEY": s3.access_key, "SAIL_STORE_SECRET_KEY": s3.secret_key}
                data = {var: base64.b64encode(creds[var].encode()).decode() for var in CREDENTIAL_VARS}
                secret = {"metadata": {"name": SECRET}, "data": data}
                kube.state.create(kube.type("secrets"), NAMESPACE, secret)
                env = {"OMP_NUM_THREADS": "1", TAG_VAR: w.tag}
                if backend == KUBE:  # processes run this checkout; containers run their image's code
                    env["PYTHONPATH"] = str(root)
                mode = "container" if backend == CONTAINERS else "execute"
                with FakeTrainingOperator(kube, mode=mode, cwd=str(root), kill_grace=2.0,
                                          extra_env=env) as operator:
                    w.kube, w.operator = kube, operator
                    yield w
        finally:
            w.kill_all()
