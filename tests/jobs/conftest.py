"""Fixtures for the workload tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jobs_helpers import contract_env


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    d.mkdir()
    return d


@pytest.fixture
def make_env(store_dir: Path) -> Callable[..., dict[str, str]]:
    def make(**kw: Any) -> dict[str, str]:
        return contract_env(store_dir, **kw)
    return make
