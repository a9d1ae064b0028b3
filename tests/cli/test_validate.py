"""`python -m sailk8s validate` and the CLI's start-up: clear messages, no torch, fast --help."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sailk8s", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)


@pytest.mark.parametrize("name", ["quickstart.yaml", "cluster.yaml"])
def test_examples_validate(name: str) -> None:
    res = _cli("validate", "-f", f"examples/{name}", "--show")
    assert res.returncode == 0, res.stderr
    assert ": ok (run" in res.stdout


def test_invalid_file_lists_each_problem_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        "run: r1\nstore: file:///tmp/x\nstages:\n"
        "  - {name: a, kind: caption, depends: [b], resources: {gpus_per_node: x}}\n"
        "  - {name: b, kind: bogus, extra: 1}\n"
    )
    res = _cli("validate", "-f", str(f))
    assert res.returncode == 3
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr
    assert any("stages[0].resources.gpus_per_node" in line for line in lines)
    assert any("stages[1].kind" in line for line in lines)
    assert any("stages[1].extra: unknown field" in line for line in lines)
    assert all(line.startswith("error: ") for line in lines)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("run: [unclosed\n")
    res = _cli("validate", "-f", str(f))
    assert res.returncode == 3 and "invalid YAML at line" in res.stderr
    res = _cli("validate", "-f", str(tmp_path / "nope.yaml"))
    assert res.returncode == 3 and "no such pipeline file" in res.stderr


def test_non_utf8_file_and_yaml_alias_expansion(tmp_path: Path) -> None:
    f = tmp_path / "latin.yaml"
    f.write_bytes(b"run: caf\xe9\nstore: file:///tmp/x\nstages: []\n")
    res = _cli("validate", "-f", str(f))
    assert res.returncode == 3 and "cannot read pipeline file" in res.stderr and "utf-8" in res.stderr
    # A billion-laughs style file: aliases nest 9^8 items; validation stops at the first bad field.
    levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        levels.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("run: r1\nstore: file:///tmp/x\n" + "\n".join(levels) +
                    "\nstages:\n  - {name: s, kind: filter, config: {filters: *h}}\n")
    t0 = time.monotonic()
    res = _cli("validate", "-f", str(bomb))
    assert res.returncode == 3 and "a: unknown field" in res.stderr and "Traceback" not in res.stderr
    assert time.monotonic() - t0 < 50  # never expanded into 43M items


def test_version() -> None:
    from sailk8s import __version__

    res = _cli("--version")
    assert res.returncode == 0 and __version__ in res.stdout


def test_help_is_fast_and_imports_no_ml_stack() -> None:
    code = (
        "import sys, time; t = time.perf_counter();"
        "from sailk8s.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "ml = ('torch', 'transformers', 'deepspeed', 'webdataset', 'numpy')\n"
        "heavy = [m for m in ml if m in sys.modules]\n"
        "print('HEAVY', heavy, time.perf_counter() - t)"
    )
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU time, not wall time: a busy machine stretches the wall clock, not the work done.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("HEAVY"))
    assert "HEAVY []" in line, line
    for cmd in ("validate", "run", "status", "render", "logs"):
        assert cmd in res.stdout
    # Interpreter start-up included; a generous bound that still catches importing torch (~2 s+).
    assert cpu < 1.5, f"--help took {cpu:.2f}s of CPU"


def test_bad_sail_env_setting_is_one_line(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "SAIL_LOG_FORMAT": "xml"}
    res = _cli("validate", "-f", "examples/quickstart.yaml", env=env)
    assert res.returncode == 3
    assert "SAIL_" in res.stderr and "Traceback" not in res.stderr


def test_json_log_format_is_json(tmp_path: Path) -> None:
    import json
    import os

    code = (
        "import structlog; from sailk8s.logsetup import configure_logging;"
        "configure_logging('json'); structlog.get_logger('t').info('hello', stage='sft')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ), timeout=60)
    rec = json.loads(res.stderr.strip().splitlines()[-1])
    assert rec["event"] == "hello" and rec["stage"] == "sft" and rec["level"] == "info"
