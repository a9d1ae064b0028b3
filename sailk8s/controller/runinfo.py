"""What the controller knows about a run besides its state: its identity, holder, progress marks."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from typing import Any

from sailk8s.ledger.results import StageResults
from sailk8s.store.base import ObjectStore

Event = dict[str, Any]


class Aborted(Exception):
    """The controller is stopping (lock lost or interrupted): leave attempts running for adoption."""


def new_run_id() -> str:
    """A fresh run identity (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def default_holder() -> str:
    """This controller's identity for the run lock: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def read_progress(store: ObjectStore, run: str, stage: str) -> dict[str, Any] | None:
    """The stage's progress record as a dict (for events), or None when absent or unreadable."""
    record = StageResults(store, run, stage).read_progress()
    return None if record is None else record.model_dump()


def progress_mark(progress: dict[str, Any] | None) -> str | None:
    """What counts as progress: the work counters, not the timestamp rank 0 refreshes."""
    if progress is None:
        return None
    keys = [k for k in ("done", "step", "samples", "tokens") if k in progress]
    picked = {k: progress[k] for k in keys} if keys else progress
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()


