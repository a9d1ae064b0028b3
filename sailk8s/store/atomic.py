"""Atomic local file writes: a temp file beside the target, then os.replace (same filesystem)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sailk8s.errors import StoreKeyError

# Temp files carry this prefix so listings can skip them and keys can never collide with them.
TEMP_PREFIX = ".sailtmp."


def check_not_temp(key: str) -> str:
    """Refuse keys whose last segment looks like a writer's temp file (they would never list)."""
    if key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX):
        raise StoreKeyError(f"invalid store key {key!r}: names starting with {TEMP_PREFIX!r} are reserved")
    return key


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *,
                 durable: bool = False) -> None:
    """Create `path` with what `write` writes; on any failure the old file (if any) is untouched.

    Raises the underlying OSError; the caller turns it into a message naming the object.
    `durable` fsyncs the data before the rename, so after a power loss the name never points
    at missing data. The directory is not fsynced: journaling filesystems (ext4, xfs) commit
    metadata in order, so the next fsync (e.g. of the ledger marker written after this
    object) persists this rename too; at worst the last write before a crash is lost whole,
    never torn. Syncing the directory as well halved put throughput (benchmarks/store_throughput.py).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; objects should read like ordinary files
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

