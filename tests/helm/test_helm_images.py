"""The Dockerfiles parse, pin their bases, run as non-root, run modules that exist, and install
exactly the package extras; the Make targets build and push the images the chart pulls."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART_DIR, KIND_IMAGE, MINIMAL_CONFIG, ROOT

from sailk8s.cli import COMMANDS
from sailk8s.envcontract import launch_command, stage_command
from sailk8s.spec import STAGE_KINDS, Stage

IMAGES = ROOT / "images"
CONTROLLER = IMAGES / "controller" / "Dockerfile"
WORKLOAD = IMAGES / "workload" / "Dockerfile"
WORKLOAD_TARGETS = {"caption": "sail-caption", "filter": "sail-filter", "train": "sail-train"}
KNOWN = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "CMD", "ENTRYPOINT",
         "LABEL", "EXPOSE", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD"}


@dataclass
class Stage_:
    """One build stage: its base, name and instructions (instruction, argument text)."""

    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def last(self, instruction: str) -> str | None:
        found = [arg for ins, arg in self.steps if ins == instruction]
        return found[-1] if found else None


def parse_dockerfile(path: Path) -> list[Stage_]:
    """A small Dockerfile parser: continuations, comments, global ARGs, stages; errors on junk."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage_] = []
    for line in logical:
        instruction, _, arg = line.partition(" ")
        instruction = instruction.upper()
        assert instruction in KNOWN, f"{path}: unknown instruction {instruction!r}"
        if instruction == "FROM":
            parts = arg.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            assert len(parts) in (1, 3), f"{path}: malformed FROM {arg!r}"
            stages.append(Stage_(base=base, name=name))
        elif not stages:
            assert instruction == "ARG", f"{path}: {instruction} before FROM"
            name, _, default = arg.partition("=")
            global_args[name] = default
        else:
            stages[-1].steps.append((instruction, arg))
    assert stages, f"{path}: no FROM"
    return stages


def exec_form(arg: str | None) -> list[str]:
    assert arg is not None and arg.startswith("["), f"not in exec form: {arg!r}"
    value: list[str] = json.loads(arg)
    return value


def pip_installs(stages: list[Stage_]) -> list[list[str]]:
    """Arguments of every `pip install` in RUN instructions."""
    found = []
    for stage in stages:
        for ins, arg in stage.steps:
            if ins != "RUN":
                continue
            lexer = shlex.shlex(arg, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            commands: list[list[str]] = [[]]
            for token in lexer:  # shell operators end a command; quoted text stays whole
                if token in ("&&", "||", ";", "|", ">", ">>"):
                    commands.append([])
                else:
                    commands[-1].append(token)
            for words in commands:
                if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                    found.append(words[words.index("install") + 1:])
    return found


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def torch_pin(requirements: list[str]) -> str:
    (pin,) = [r for r in requirements if r.replace(" ", "").startswith("torch==")]
    return pin.split("==")[1].strip()


def test_dockerfiles_parse_and_pin_their_bases() -> None:
    for path in (CONTROLLER, WORKLOAD):
        for stage in parse_dockerfile(path):
            if stage.base in {s.name for s in parse_dockerfile(path)}:
                continue  # FROM an earlier stage
            image, _, tag = stage.base.rpartition(":")
            assert image and tag and "/" not in tag, f"{path}: {stage.base} has no tag"
            assert tag != "latest" and re.search(r"\d", tag), f"{path}: {stage.base} is not pinned"


def test_workload_base_torch_is_the_ml_extra_torch() -> None:
    (base, *_) = parse_dockerfile(WORKLOAD)
    assert base.base.startswith("pytorch/pytorch:") and base.base.endswith("-runtime")
    tag_torch = base.base.split(":")[1].split("-")[0]
    ml_torch = torch_pin(pyproject()["project"]["optional-dependencies"]["ml"])
    constraints = (ROOT / "requirements/constraints.txt").read_text().splitlines()
    assert tag_torch == ml_torch == torch_pin(constraints)


def test_images_run_as_non_root() -> None:
    controller = parse_dockerfile(CONTROLLER)[-1]
    workload = {s.name: s for s in parse_dockerfile(WORKLOAD)}
    for stage in [controller, *(workload[t] for t in WORKLOAD_TARGETS)]:
        user = stage.last("USER")
        assert user is not None and user.split(":")[0].isdigit() and int(user.split(":")[0]) > 0, stage.name


def test_controller_entry_point_is_the_cli_the_chart_runs() -> None:
    controller = parse_dockerfile(CONTROLLER)[-1]
    entrypoint = exec_form(controller.last("ENTRYPOINT"))
    assert entrypoint == ["python", "-m", "sailk8s"]
    assert (ROOT / "sailk8s" / "__main__.py").is_file()
    job = (CHART_DIR / "templates" / "controller-job.yaml").read_text()
    command = re.search(r'command: (\["python", "-m", "sailk8s".*\])', job)
    assert command is not None
    argv = json.loads(command.group(1))
    assert argv[:3] == entrypoint and argv[3] in COMMANDS


def test_workload_targets_run_existing_job_modules_like_the_manifest_builder() -> None:
    workload = {s.name: s for s in parse_dockerfile(WORKLOAD)}
    for target in WORKLOAD_TARGETS:
        cmd = exec_form(workload[target].last("CMD"))
        # The same launcher as the PyTorchJob's container command (envcontract.launch_command).
        kind = cmd[-1].removeprefix("jobs.")
        stage = Stage(name="s", kind=kind, config=MINIMAL_CONFIG.get(kind, {}))
        assert cmd == launch_command(stage, nnodes=None), target
        assert importlib.util.find_spec("jobs.launch") is not None
        assert importlib.util.find_spec(cmd[-1]) is not None, f"{target}: no module {cmd[-1]}"


def test_every_stage_command_runs_a_module_of_its_image() -> None:
    built = set(WORKLOAD_TARGETS.values())
    for kind in STAGE_KINDS:
        stage = Stage(name="s", kind=kind, config=MINIMAL_CONFIG.get(kind, {}))
        argv = stage_command(stage)
        assert argv[0] == "torchrun" and argv[-2:] == ["-m", f"jobs.{kind}"]
        assert launch_command(stage, nnodes=2)[:3] == ["python", "-m", "jobs.launch"]
        assert importlib.util.find_spec(f"jobs.{kind}") is not None, f"no module jobs.{kind}"
        assert KIND_IMAGE[kind] in built  # every workload image installs the whole package + [ml]


def test_images_install_the_package_extras_only() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    controller = pip_installs(parse_dockerfile(CONTROLLER))
    assert controller == [["-c", "requirements/constraints.txt", "."]]  # base dependencies, no torch
    installs = pip_installs(parse_dockerfile(WORKLOAD))
    used: set[str] = set()
    for args in installs:
        assert args[0] == "-c", f"unconstrained pip install {args}"
        (target,) = args[2:]
        match = re.fullmatch(r"\.(?:\[([a-z0-9,-]+)\])?", target)
        assert match, f"the images install only this package (with extras), not {target!r}"
        used.update((match.group(1) or "").split(","))
    assert "ml" in used and used <= set(extras), used
    assert "test" not in used
    # The constraints keep the base image's torch and pin the rest like requirements/constraints.txt.
    text = WORKLOAD.read_text()
    assert "print('torch==' + torch.__version__)" in text
    assert "grep -v '^torch==' requirements/constraints.txt" in text


def test_build_context_sends_what_the_images_copy() -> None:
    for path in (CONTROLLER, WORKLOAD):
        ignore = (path.parent / "Dockerfile.dockerignore").read_text().splitlines()
        assert ignore[ignore.index("*") + 1:][:5] == [
            "!pyproject.toml", "!README.md", "!requirements/constraints.txt", "!sailk8s", "!jobs"]
        copied = [src for s in parse_dockerfile(path) for i, arg in s.steps if i == "COPY"
                  for src in arg.split()[:-1]]
        assert sorted(copied) == sorted(
            ["pyproject.toml", "README.md", "requirements/constraints.txt", "sailk8s", "jobs"])
        for src in copied:
            assert (ROOT / src).exists(), src


def test_make_builds_and_pushes_the_images_the_chart_pulls() -> None:
    out = subprocess.run(["make", "-n", "-f", "images/images.mk", "images-push",
                          "REGISTRY=registry.example.com/team", "TAG=9.9.9"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode == 127 or "not found" in out.stderr:
        pytest.skip("make is not installed")
    assert out.returncode == 0, out.stderr
    builds = [shlex.split(line) for line in out.stdout.splitlines() if " build " in line]
    tags = {}
    for argv in builds:
        dockerfile = ROOT / argv[argv.index("-f") + 1]
        target = argv[argv.index("--target") + 1] if "--target" in argv else None
        if target:
            assert target in {s.name for s in parse_dockerfile(dockerfile)}
        tags[argv[argv.index("-t") + 1]] = (dockerfile, target)
        assert argv[-1] == "."  # the repository root is the build context
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["image"]
    names = [values["controller"], *values["workloads"].values()]
    assert set(tags) == {f"registry.example.com/team/{n}:9.9.9" for n in names}
    assert tags["registry.example.com/team/sail-controller:9.9.9"] == (CONTROLLER, None)
    for target, image in WORKLOAD_TARGETS.items():
        assert tags[f"registry.example.com/team/{image}:9.9.9"] == (WORKLOAD, target)
    assert "docker push registry.example.com/team/$image:9.9.9" in out.stdout
    assert values_default_registry_matches_make(values["registry"])


def values_default_registry_matches_make(registry: str) -> bool:
    make = (IMAGES / "images.mk").read_text()
    return f"REGISTRY ?= {registry}" in make
