"""Atomic local file writes: a temp file beside the target, then os.replace (same filesystem)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
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
    tmp = _write_temp(target, write, durable=durable)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_exclusive(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *,
                     durable: bool = False) -> bool:
    """Like write_atomic, but only if nothing is at `path` yet; False (nothing written) if something is.

    The temp file is hard-linked to the target: link(2) fails with EEXIST instead of
    replacing, atomically even between processes and on NFS. Raises OSError where the
    filesystem has no hard links (EPERM, ENOTSUP); the caller then falls back to a lock.
    """
    target = Path(path)
    tmp = _write_temp(target, write, durable=durable)
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return True


def _write_temp(target: Path, write: Callable[[IO[bytes]], object], *, durable: bool) -> str:
    """A complete temp file beside target (same filesystem, so rename and link work); its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; objects should read like ordinary files
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


@contextlib.contextmanager
def locked_beside(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive flock on a lock file beside `path` (which need not exist; its folder must).

    The lock file is named with TEMP_PREFIX, so it is never a key nor listed; it is kept
    after use, because unlinking a lock file another process waits on would split the lock.
    """
    target = Path(path)
    lock_path = target.parent / f"{TEMP_PREFIX}lock.{target.name}"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock
