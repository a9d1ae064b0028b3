"""Fixtures: one store with a finished, retried run (built once per session) and a live run beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from dash_support import retried_run

from sailk8s.store.local import LocalStore


@pytest.fixture(scope="session")
def retried_store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    """A store whose run r1 ran through the real controller, caption failing once then succeeding."""
    return retried_run(Path(tmp_path_factory.mktemp("dash")))
