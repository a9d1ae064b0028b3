"""A store wrapper that counts calls, to pin request budgets in tests and benchmarks."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

from sailk8s.store.base import ObjectStore


class CountingStore(ObjectStore):
    """Delegates to another store and counts calls per method (to pin request budgets)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.calls: Counter[str] = Counter()

    def put(self, key: str, data: bytes) -> None:
        self.calls["put"] += 1
        self.inner.put(key, data)

    def get(self, key: str) -> bytes:
        self.calls["get"] += 1
        return self.inner.get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.calls["get_range"] += 1
        return self.inner.get_range(key, start, length)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        self.calls["get_versioned"] += 1
        return self.inner.get_versioned(key)

    def put_if(self, key: str, data: bytes, *, if_absent: bool = False,
               if_version: str | None = None) -> str | None:
        self.calls["put_if"] += 1
        return self.inner.put_if(key, data, if_absent=if_absent, if_version=if_version)

    def delete_if(self, key: str, version: str) -> bool:
        self.calls["delete_if"] += 1
        return self.inner.delete_if(key, version)

    def exists(self, key: str) -> bool:
        self.calls["exists"] += 1
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        self.calls["list"] += 1
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        self.inner.delete(key)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.calls["put_file"] += 1
        self.inner.put_file(key, path)

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.calls["get_file"] += 1
        self.inner.get_file(key, path)
