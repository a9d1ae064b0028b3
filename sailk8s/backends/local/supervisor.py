"""Supervises one local attempt: `python -m sailk8s.backends.local.supervisor [--grace S] DIR -- CMD`
(logs split by rank, cancel, archive, exit record; see `supervise`)."""

from __future__ import annotations

import argparse
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

from sailk8s.backends.local.procs import kill_tree

# torchrun's `--tee` prefix on each worker line: `[default<r>]:`.
_RANK_PREFIX = re.compile(r"^\[[A-Za-z_]*?(\d+)\]:")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to path via a temp file + rename so readers never see half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class LogSplitter:
    """Routes output lines to per-rank files and a combined, rank-prefixed file.

    Lines without a rank prefix (the launcher's own) belong to rank 0, as in rank 0's pod log.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.combined = open(directory / "attempt.log", "a", encoding="utf-8")  # noqa: SIM115
        self.files: dict[int, IO[str]] = {}
        self._last_rank_line: str | None = None
        self._last_other_line: str | None = None

    @property
    def last_line(self) -> str | None:
        """The last line a rank wrote (the launcher's failure summary says less), else any line."""
        return self._last_rank_line or self._last_other_line

    def write(self, line: str) -> None:
        line = line.rstrip("\r\n")
        m = _RANK_PREFIX.match(line)
        rank = int(m.group(1)) if m else 0
        text = line[m.end() :] if m else line
        f = self.files.get(rank)
        if f is None:
            f = self.files[rank] = open(self.dir / f"rank-{rank}.log", "a", encoding="utf-8")  # noqa: SIM115
        f.write(text + "\n")
        f.flush()
        self.combined.write(f"[rank {rank}] {text}\n")
        self.combined.flush()
        if text.strip():
            if m:
                self._last_rank_line = text.strip()[:500]
            else:
                self._last_other_line = text.strip()[:500]

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.combined.close()


def archive_logs(directory: Path, env: dict[str, str]) -> str | None:
    """Copy the rank logs to the store; the error text if that failed (the attempt still ends)."""
    try:
        from sailk8s.ledger.results import StageResults
        from sailk8s.store import open_store

        store = open_store(env["SAIL_STORE_URI"])
        attempt = int(env.get("SAIL_ATTEMPT", "1"))
        results = StageResults(store, env["SAIL_RUN"], env["SAIL_STAGE"])
        for path in sorted((directory / "logs").glob("rank-*.log")):
            results.archive_log_file(attempt, int(path.stem.split("-", 1)[1]), path)
    except Exception as err:  # any failure here must not lose the exit record
        return f"{type(err).__name__}: {err}"
    return None


def supervise(directory: Path, cmd: list[str], grace: float) -> int:
    """Run cmd, split its logs, archive them, record exit.json. Returns 0 unless it cannot start.

    LocalBackend starts the supervisor detached (its own session), so the attempt outlives a
    killed controller and a restarted one adopts it. CMD (the launcher) runs in its own process
    group; output is split by rank into DIR/logs/rank-<r>.log and DIR/attempt.log (`[rank r] `
    prefixed), flushed line by line. SIGTERM/SIGINT (cancel) sends SIGTERM to the command, which
    stops its ranks, and SIGKILL to it and every process under it after `grace` seconds. When
    CMD ends, the rank logs are archived to the store, and only then is DIR/exit.json written
    (CMD's exit code, cancelled, last line), atomically. The launcher's exit code is the first
    failed rank's own, so the exit-code convention of sailk8s.exitcodes holds as in a pod.
    """
    splitter = LogSplitter(directory)
    cancelled = threading.Event()
    procs: list[subprocess.Popen[bytes]] = []

    def kill_group(sig: int) -> None:
        # torchrun starts each rank in a session of its own: a group signal would miss them.
        for proc in procs:
            kill_tree(proc.pid, sig, tree=sig == signal.SIGKILL)

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
    parser = argparse.ArgumentParser(prog="python -m sailk8s.backends.local.supervisor")
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
