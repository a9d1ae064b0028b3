"""Fixtures: one moto S3 server per session, a fresh bucket per test, stores of both kinds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sailk8s.store.base import ObjectStore
from sailk8s.store.local import LocalStore
from sailk8s.testing.s3 import FaultProxy, S3Server, s3_server


@pytest.fixture(scope="session")
def s3_session() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def s3(s3_session: S3Server) -> S3Server:
    """The session's server with a bucket of this test's own."""
    return S3Server(endpoint=s3_session.endpoint, bucket=s3_session.make_bucket())


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3.endpoint) as p:
        yield p


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Every contract test runs on both implementations (S3 under a key prefix)."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server: S3Server = request.getfixturevalue("s3")
    return server.store("pre/fix", retry_seconds=5.0)  # type: ignore[no-any-return]
