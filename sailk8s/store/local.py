"""LocalStore: the object store on a local (or mounted) filesystem, atomic by temp file + rename."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from sailk8s.errors import ObjectNotFound, StoreError, StoreKeyError, StoreUnavailable
from sailk8s.store.atomic import TEMP_PREFIX, check_not_temp, create_exclusive, locked_beside, write_atomic
from sailk8s.store.base import ObjectStore, check_condition, check_range, validate_key, validate_prefix

_COPY_CHUNK = 1 << 20
_SENDFILE_CHUNK = 1 << 30
# link(2) errors that mean "this filesystem has no hard links" (vfat, some FUSE mounts).
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


class LocalStore(ObjectStore):
    """Objects are files under `root`; keys are relative paths below it."""

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        """`durable` fsyncs each object's data before its rename, so it survives a power loss too."""
        self.root = Path(root).absolute()
        self.uri = "file://" + self.root.as_posix()
        self.durable = durable

    def __repr__(self) -> str:
        return f"LocalStore({self.uri!r})"

    # -- keys -------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        validate_key(key)
        check_not_temp(key)
        path = self.root / key
        # Defence in depth: a symlink inside the root must not lead a key outside of it.
        resolved = path.resolve()
        root = self.root.resolve()
        if resolved != root and root not in resolved.parents:
            raise StoreKeyError(f"invalid store key {key!r}: resolves outside the store root {self.uri}")
        return path

    def check(self) -> None:
        """Verify the root is (or can become) a writable directory."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreUnavailable(f"cannot create store root {self.uri}: {err.strerror or err}") from err
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreUnavailable(f"store root {self.uri} is not writable")

    # -- writes -----------------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        """Write data to a temp file beside the target, then rename it into place."""
        path = self._path(key)
        self._write(key, path, lambda f: f.write(data))

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Copy a local file into the store atomically."""
        target = self._path(key)
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below; opened first so a missing file fails early
        except OSError as err:
            raise StoreError(f"cannot read local file {os.fspath(path)!r} for {self.describe(key)}: "
                             f"{err.strerror or err}") from err
        with src:
            self._write(key, target, lambda f: _copy(src, f))

    def _write(self, key: str, path: Path, write: Callable[[IO[bytes]], object]) -> None:
        try:
            write_atomic(path, write, durable=self.durable)
        except OSError as err:
            raise self._os_error("write", key, err) from err

    # -- conditional writes -----------------------------------------------------------------
    # A version is the sha256 of the content: "replace only if unchanged" needs nothing more,
    # and unlike mtime or inode numbers it cannot come back for different bytes.
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """Read a whole file and the sha256 of its content."""
        data = self.get(key)
        return data, _version(data)

    def put_if(self, key: str, data: bytes, *, if_absent: bool = False,
               if_version: str | None = None) -> str | None:
        """Create by temp file + link(2), which never replaces; replace under a per-key flock."""
        check_condition(if_absent, if_version)
        path = self._path(key)

        def write(f: IO[bytes]) -> object:
            return f.write(data)

        try:
            if if_absent:
                try:
                    created = create_exclusive(path, write, durable=self.durable)
                except OSError as err:
                    if err.errno not in _NO_LINKS:
                        raise
                    created = self._create_locked(path, write)  # a filesystem without hard links
                return _version(data) if created else None
            if not path.parent.is_dir():
                return None  # no folder, so no object to replace
            with locked_beside(path):
                if _current_version(path) != if_version:
                    return None
                write_atomic(path, write, durable=self.durable)
        except OSError as err:
            raise self._os_error("write", key, err) from err
        return _version(data)

    def _create_locked(self, path: Path, write: Callable[[IO[bytes]], object]) -> bool:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked_beside(path):
            if os.path.lexists(path):
                return False
            write_atomic(path, write, durable=self.durable)
        return True

    def delete_if(self, key: str, version: str) -> bool:
        """Unlink under the per-key flock if the content still hashes to version."""
        path = self._path(key)
        if not path.parent.is_dir():
            return False
        try:
            with locked_beside(path):
                if _current_version(path) != version:
                    return False
                path.unlink()
        except OSError as err:
            raise self._os_error("delete", key, err) from err
        return True

    def delete(self, key: str) -> None:
        """Remove the file; a missing key is fine."""
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno in (errno.EISDIR, errno.EPERM) and path.is_dir():
                return  # a "directory" is not an object: nothing to delete
            raise self._os_error("delete", key, err) from err

    # -- reads ------------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """Read a whole file."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"object not found: {self.describe(key)}") from None
        except OSError as err:
            raise self._os_error("read", key, err) from err

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Read part of a file: a seek, not the whole file."""
        check_range(start, length)
        path = self._path(key)
        try:
            with path.open("rb") as f:
                f.seek(start)
                return f.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"object not found: {self.describe(key)}") from None
        except OSError as err:
            raise self._os_error("read", key, err) from err

    def exists(self, key: str) -> bool:
        """Whether a file (not a directory) exists at key."""
        return self._path(key).is_file()

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Copy the object to a temp file beside `path`, then rename it into place."""
        src_path = self._path(key)
        try:
            src = open(src_path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"object not found: {self.describe(key)}") from None
        except OSError as err:
            raise self._os_error("read", key, err) from err
        with src:
            try:
                write_atomic(path, lambda f: _copy(src, f))
            except OSError as err:
                raise StoreError(f"cannot write local file {os.fspath(path)!r} from {self.describe(key)}: "
                                 f"{err.strerror or err}") from err

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with prefix, sorted; walks only the directory the prefix points into."""
        validate_prefix(prefix)
        head, _, partial = prefix.rpartition("/")
        start = self.root / head if head else self.root
        base = head + "/" if head else ""
        found: list[str] = []
        try:
            entries = list(os.scandir(start))
        except (FileNotFoundError, NotADirectoryError):
            return iter(())
        except OSError as err:
            raise self._os_error("list", prefix, err) from err
        for entry in entries:
            if entry.name.startswith(partial) and not entry.name.startswith(TEMP_PREFIX):
                _walk(entry, base + entry.name, found)
        found.sort()
        return iter(found)

    def _os_error(self, op: str, key: str, err: OSError) -> StoreError:
        where = self.describe(key)
        if isinstance(err, PermissionError) or err.errno in (errno.EROFS, errno.EACCES):
            return StoreUnavailable(f"cannot {op} {where}: {err.strerror or err}")
        if err.errno == errno.ENOSPC:
            return StoreUnavailable(f"cannot {op} {where}: no space left on device")
        if isinstance(err, (NotADirectoryError, FileExistsError)) or err.errno == errno.EISDIR:
            return StoreError(f"cannot {op} {where}: a parent or the key itself is both an object "
                              "and a prefix (the local store cannot hold both)")
        return StoreError(f"cannot {op} {where}: {err.strerror or err}")


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _current_version(path: Path) -> str | None:
    try:
        return _version(path.read_bytes())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _walk(entry: os.DirEntry[str], key: str, out: list[str]) -> None:
    """Append the keys of regular files at or below entry."""
    if entry.is_file(follow_symlinks=False):
        out.append(key)
    elif entry.is_dir(follow_symlinks=False):
        try:
            children = list(os.scandir(entry.path))
        except FileNotFoundError:
            return  # removed while we walked
        for child in children:
            if not child.name.startswith(TEMP_PREFIX):
                _walk(child, key + "/" + child.name, out)


def _copy(src: IO[bytes], dst: IO[bytes]) -> None:
    """Copy file to file in the kernel (sendfile) where possible, like shutil.copyfile does."""
    try:
        in_fd, out_fd = src.fileno(), dst.fileno()
    except (AttributeError, OSError):
        shutil.copyfileobj(src, dst, _COPY_CHUNK)
        return
    dst.flush()
    offset = src.tell()
    try:
        while True:
            sent = os.sendfile(out_fd, in_fd, offset, _SENDFILE_CHUNK)
            if sent == 0:
                break
            offset += sent
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP) or offset != src.tell():
            raise
        shutil.copyfileobj(src, dst, _COPY_CHUNK)  # no sendfile for this pair of files
        return
    src.seek(offset)
    dst.seek(0, os.SEEK_END)
