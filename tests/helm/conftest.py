"""Fixtures for the chart, manifests and images tests: one Helm engine for the whole session.

The helm-python-sdk loads a ~270 MB native library, so the chart is loaded once per session and
renders are cached by their values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from chartkit import CHART_DIR, NAMESPACE, RELEASE, VALUE_SETS, Objects, parse_render


@pytest.fixture(scope="session")
def helm() -> Any:
    return pytest.importorskip("helm_python")


@pytest.fixture(scope="session")
def chart(helm: Any) -> Any:
    loaded = helm.Chart.load(CHART_DIR)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def render_raw(chart: Any) -> Callable[..., dict[str, str]]:
    """render_raw(values) -> {template path: text}, like `helm template`, cached."""
    cache: dict[str, dict[str, str]] = {}

    def render(values: dict[str, Any] | None = None, name: str = RELEASE,
               namespace: str = NAMESPACE) -> dict[str, str]:
        key = json.dumps([values or {}, name, namespace], sort_keys=True)
        if key not in cache:
            cache[key] = chart.render(values or {}, name=name, namespace=namespace)
        return cache[key]

    return render


@pytest.fixture(scope="session")
def render(render_raw: Callable[..., dict[str, str]]) -> Callable[..., Objects]:
    """render(values) -> parsed objects, hooks included."""

    def objects(values: dict[str, Any] | None = None, **kw: Any) -> Objects:
        return parse_render(render_raw(values, **kw))

    return objects


@pytest.fixture(params=sorted(VALUE_SETS), scope="session")
def value_set(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Each realistic values set (default + ci/*.yaml) by name."""
    return request.param, VALUE_SETS[request.param]
