"""`run` on a terminal (a pseudo-terminal here): live bars, each event told once, a summary table."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ctl_support import CONTROLLERS, set_fake

from sailk8s.ledger import StageResults
from sailk8s.store.local import LocalStore

RETRY = {"max_attempts": 2, "backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.2}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_terminal(args: list[str], timeout: float = 180) -> tuple[int, str]:
    """Run `python -m sailk8s ARGS` with stdout and stderr on a pseudo-terminal; (exit code, text)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    env.pop("SAIL_LOG_LEVEL", None)
    proc = subprocess.Popen([sys.executable, "-m", "sailk8s", *args], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    CONTROLLERS.append(proc)  # type: ignore[arg-type]  # killed at teardown if still alive
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            seen = b"".join(chunks).decode(errors="replace")[-2000:]
            raise AssertionError(f"no output from the terminal for too long: {seen}")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r", "\n")


@pytest.mark.slow
def test_run_on_a_terminal_shows_bars_events_once_and_a_summary(tmp_path: Path, local_env: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                file_store: LocalStore) -> None:
    set_fake(monkeypatch, a={"shards": 4, "sleep": 0.3}, b={"fail": {"1": 1}, "fail_after": 1})
    stages = [{"name": "a", "kind": "ingest", "outputs": ["data/a"], "retry": RETRY},
              {"name": "b", "kind": "filter", "depends": ["a"], "inputs": ["data/a"], "outputs": ["data/b"],
               "retry": RETRY}]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"run": "r1", "backend": "local", "store": f"file://{local_env['store']}",
                                    "stages": stages}))
    code, out = run_on_a_terminal(["run", "-f", str(path)])
    assert code == 0, out[-3000:]
    # Each event once, as a readable line; no structlog line repeats it.
    assert out.count("a: attempt 1 submitted") == 1
    assert out.count("b: attempt 1 failed [app]") == 1 and out.count("b: attempt 2 submitted") == 1
    assert out.count("b: retrying in") == 1
    assert "submitted attempt" not in out and "[info" not in out and "[warning" not in out
    # The live bars: a stage's shards and percent while it works.
    assert re.search(r"^a\s+.*\d+%.*/4(\.0)? shards", out, re.M), out[-3000:]
    assert re.search(r"^b\s+.*attempt 2", out, re.M) or "attempt 2" in out
    # The summary table at the end, with each stage's state and attempts.
    assert "run r1" in out
    assert re.search(r"│ b\s+│ succeeded\s+│ 2\s+│", out), out[-3000:]
    assert StageResults(file_store, "r1", "b").read_report() is not None


@pytest.mark.slow
def test_submit_on_a_terminal_shows_its_stage_live_and_a_summary(tmp_path: Path, local_env: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    set_fake(monkeypatch, a={"shards": 3, "fail": {"1": 1}, "fail_after": 1})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"run": "r2", "backend": "local", "store": f"file://{local_env['store']}",
                                    "stages": [{"name": "a", "kind": "ingest", "outputs": ["data/a"],
                                                "retry": RETRY}]}))
    code, out = run_on_a_terminal(["submit", "a", "-f", str(path)])
    assert code == 0, out[-3000:]
    assert out.count("a: attempt 1 failed [app]") == 1 and out.count("a: attempt 2 succeeded") == 1
    assert "[info" not in out and "[warning" not in out
    assert re.search(r"^a\s+.*100%.*3/3 shards", out, re.M), out[-3000:]
    assert re.search(r"│ a\s+│ succeeded\s+│ 2\s+│", out), out[-3000:]
