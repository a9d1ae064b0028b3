"""The supervisor of one local stage attempt: `python -m sailk8s.backends.localrun [--grace S] DIR -- CMD`.

LocalBackend starts it detached (its own session), so the attempt outlives a killed
controller and a restarted one adopts it. It runs CMD (torchrun or python -m jobs.<kind>) in
its own process group and:
- splits the output by rank (torchrun's `--tee` prefix `[default<r>]:`) into
  DIR/logs/rank-<r>.log and DIR/attempt.log (`[rank r] ` prefixed), flushed line by line;
- on SIGTERM/SIGINT (cancel) sends SIGTERM to the process group, SIGKILL after a grace period;
- when CMD ends, archives the rank logs to the store at runs/<run>/<stage>/attempts/<k>/logs/
  and only then writes DIR/exit.json (exit code, cancelled, last line), atomically.
torchrun exits 1 whatever its failed rank returned, so the supervisor reads the rank's real
exit code from torchrun's "Root Cause" summary: the exit-code convention must survive it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

_RANK_PREFIX = re.compile(r"^\[[A-Za-z_]*?(\d+)\]:")
_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
_ROOT_CAUSE = "Root Cause"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to path via a temp file + rename so readers never see half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class LogSplitter:
    """Routes output lines to per-rank files and a combined, rank-prefixed file."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.combined = open(directory / "attempt.log", "a", encoding="utf-8")  # noqa: SIM115
        self.files: dict[int, IO[str]] = {}
        self.last_line: str | None = None
        self.root_cause_code: int | None = None
        self._in_root_cause = False

    def write(self, line: str) -> None:
        line = line.rstrip("\r\n")
        m = _RANK_PREFIX.match(line)
        rank = int(m.group(1)) if m else 0
        text = line[m.end() :] if m else line
        if not m:
            self._watch_torchrun(text)
        f = self.files.get(rank)
        if f is None:
            f = self.files[rank] = open(self.dir / f"rank-{rank}.log", "a", encoding="utf-8")  # noqa: SIM115
        f.write(text + "\n")
        f.flush()
        self.combined.write(f"[rank {rank}] {text}\n")
        self.combined.flush()
        if text.strip():
            self.last_line = text.strip()[:500]

    def _watch_torchrun(self, text: str) -> None:
        # torchrun's failure summary: "Root Cause (first observed failure):" ... "exitcode : 3".
        if _ROOT_CAUSE in text:
            self._in_root_cause = True
            return
        m = _EXITCODE.match(text)
        if m and self._in_root_cause and self.root_cause_code is None:
            self.root_cause_code = int(m.group(1))

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.combined.close()


def archive_logs(directory: Path, env: dict[str, str]) -> str | None:
    """Copy the rank logs to the store; the error text if that failed (the attempt still ends)."""
    try:
        from sailk8s.runstate import rank_log_key
        from sailk8s.store import open_store

        store = open_store(env["SAIL_STORE_URI"])
        attempt = int(env.get("SAIL_ATTEMPT", "1"))
        for path in sorted((directory / "logs").glob("rank-*.log")):
            rank = int(path.stem.split("-", 1)[1])
            store.put_file(rank_log_key(env["SAIL_RUN"], env["SAIL_STAGE"], attempt, rank), path)
    except Exception as err:  # any failure here must not lose the exit record
        return f"{type(err).__name__}: {err}"
    return None


def supervise(directory: Path, cmd: list[str], grace: float) -> int:
    """Run cmd, split its logs, archive them, record exit.json. Returns 0 unless it cannot start."""
    splitter = LogSplitter(directory)
    cancelled = threading.Event()
    procs: list[subprocess.Popen[bytes]] = []

    def kill_group(sig: int) -> None:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def on_term(signum: int, frame: FrameType | None) -> None:
        if cancelled.is_set():
            return
        cancelled.set()
        kill_group(signal.SIGTERM)
        timer = threading.Timer(grace, kill_group, args=(signal.SIGKILL,))
        timer.daemon = True
        timer.start()

    # Handlers first: a cancel that arrives while the command starts must not be lost.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        child = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as err:
        splitter.write(f"cannot start {cmd[0]}: {err}")
        splitter.close()
        write_json_atomic(
            directory / "exit.json",
            {"exit_code": 127, "cancelled": False, "finished_at": time.time(), "last_line": str(err)},
        )
        return 0
    procs.append(child)
    write_json_atomic(directory / "child.json", {"pid": child.pid, "pgid": child.pid})
    if cancelled.is_set():
        kill_group(signal.SIGTERM)
    assert child.stdout is not None
    for raw in child.stdout:
        splitter.write(raw.decode("utf-8", errors="replace"))
    code = child.wait()
    splitter.close()
    if code == 1 and splitter.root_cause_code is not None:
        code = splitter.root_cause_code
    archive_error = archive_logs(directory, dict(os.environ))
    write_json_atomic(
        directory / "exit.json",
        {
            "exit_code": code,
            "cancelled": cancelled.is_set(),
            "finished_at": time.time(),
            "last_line": splitter.last_line,
            "archive_error": archive_error,
        },
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse `[--grace S] DIR -- CMD...` and supervise."""
    parser = argparse.ArgumentParser(prog="python -m sailk8s.backends.localrun")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given after --")
    return supervise(args.directory, cmd, args.grace)


if __name__ == "__main__":
    sys.exit(main())
