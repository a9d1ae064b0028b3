"""Fixtures: a LocalStore wrapped to count calls, and a moto S3 server for the S3 variants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sailk8s.store.local import LocalStore
from sailk8s.testing.s3 import S3Server, s3_server
from sailk8s.testing.stores import CountingStore


@pytest.fixture(scope="session")
def s3_session() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CountingStore:
    """A counting store over LocalStore or S3Store (fresh bucket)."""
    if request.param == "local":
        return CountingStore(LocalStore(tmp_path / "store"))
    session: S3Server = request.getfixturevalue("s3_session")
    server = S3Server(endpoint=session.endpoint, bucket=session.make_bucket())
    return CountingStore(server.store(retry_seconds=5.0))
