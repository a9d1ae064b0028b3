"""A store outage longer than the store's own retries (found by tests/chaos, store_outage) is waited out.

Before: the controller's next store call in a stage thread (progress, cancel request, state)
raised StoreUnavailable after SAIL_STORE_RETRY_SECONDS, and the stage failed with "controller
error" while its attempt kept running: a one-minute outage failed the run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ctl_fakes import FakeBackend, FakeTime, make_pipeline

from sailk8s.backends.base import AttemptRef
from sailk8s.controller import Controller
from sailk8s.controller.driver import STORE_OUTAGE_SECONDS
from sailk8s.errors import StoreUnavailable
from sailk8s.store.local import LocalStore


class FlakyStore(LocalStore):
    """A file store that refuses every call while `down` (as the S3 store does once its retries give up)."""

    down = False
    refused = 0
    _mu = threading.Lock()

    def _gate(self) -> None:
        with self._mu:
            if self.down:
                self.refused += 1
                raise StoreUnavailable("get s3://b/x: gave up after 13 attempt(s) in 30.0s: 503")

    def get(self, key: str) -> bytes:
        self._gate()
        return super().get(key)

    def put(self, key: str, data: bytes) -> None:
        self._gate()
        super().put(key, data)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        self._gate()
        return super().get_versioned(key)

    def put_if(self, key: str, data: bytes, *, if_absent: bool = False,
               if_version: str | None = None) -> str | None:
        self._gate()
        return super().put_if(key, data, if_absent=if_absent, if_version=if_version)

    def exists(self, key: str) -> bool:
        self._gate()
        return super().exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._gate()
        return super().list(prefix)


def _run(tmp_path: Path, outage_seconds: float, events: list[dict[str, Any]]) -> tuple[Any, FakeBackend]:
    """Two stages; the store goes down during a's attempt for `outage_seconds` of fake time."""
    store = FlakyStore(tmp_path / "store", durable=False)
    ft = FakeTime()
    pipeline = make_pipeline(str(store.root), [{"name": "a"}, {"name": "b", "depends": ["a"]}])
    backend = FakeBackend(store=store, time=ft)
    ends: list[float] = []

    def outage(ref: AttemptRef) -> None:
        with store._mu:
            if ref.stage == "a" and not ends:
                store.down, ends[:] = True, [ft.clock() + outage_seconds]
            elif ends and store.down and ft.clock() >= ends[0]:
                store.down = False

    def sleep(seconds: float) -> None:  # fake time; the store comes back when the outage is over
        ft.sleep(seconds)
        outage(AttemptRef("r1", "-", 0))

    backend.before_wait = outage
    ctl = Controller(pipeline, backend, store, clock=ft.clock, sleep=sleep, tick=5.0, on_event=events.append)
    return ctl.run(), backend


def test_an_outage_longer_than_the_store_retries_is_waited_out(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    state, backend = _run(tmp_path, 90.0, events)
    assert state.status == "succeeded", [e for e in events if e["event"] == "stage_failed"]
    assert backend.submits == [("a", 1), ("b", 1)]  # a's attempt was adopted again, not resubmitted
    assert not [e for e in events if "controller error" in str(e.get("cause"))]


def test_a_store_that_never_comes_back_still_fails_the_stage(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    with pytest.raises(StoreUnavailable):  # nor can the run's end be recorded: the CLI says so
        _run(tmp_path, STORE_OUTAGE_SECONDS * 10, events)
    failed = [e for e in events if e["event"] == "stage_failed"]
    assert [e["stage"] for e in failed] == ["a"] and "gave up" in failed[0]["cause"]
