"""pytest plugin (`pytest_plugins = ["sailk8s.testing.chaos.plugin"]`): the `sail_world` fixture."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sailk8s.testing.chaos.world import World, world


@pytest.fixture
def sail_world(tmp_path: Path) -> Iterator[Callable[..., World]]:
    """A factory: `sail_world("kubernetes")` starts a World (S3 + proxy, fake cluster); all stop after."""
    stack = contextlib.ExitStack()
    count = 0

    def make(backend: str = "local", root: Path | None = None) -> World:
        nonlocal count
        count += 1
        return stack.enter_context(world(tmp_path / f"world-{count}", backend, root or Path.cwd()))

    with stack:
        yield make
