"""Chaos fixtures: `--seeds N` for more scenarios, the fault-free reference run made once a session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sailk8s.spec import parse_pipeline
from sailk8s.testing.chaos import Snapshot, chaos_pipeline, snapshot, world
from sailk8s.testing.chaos.world import tagged

ROOT = Path(__file__).resolve().parents[2]
# CI runs these (a few minutes on 2 cores); `--seeds N` runs seeds 1..N on both backends.
CI_SEEDS = {"local": (2, 3), "kubernetes": (2,)}
SLOW_SEEDS = range(1, 9)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seeds", type=int, default=None, help="run chaos seeds 1..N on both backends")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not {"seed", "backend"} <= set(metafunc.fixturenames):
        return
    count = metafunc.config.getoption("--seeds")
    params = []
    for backend in ("local", "kubernetes"):
        if count:
            params += [pytest.param(backend, s, id=f"{backend}-{s}") for s in range(1, count + 1)]
            continue
        for s in SLOW_SEEDS:
            marks = () if s in CI_SEEDS[backend] else (pytest.mark.slow,)
            params.append(pytest.param(backend, s, id=f"{backend}-{s}", marks=marks))
    metafunc.parametrize(("backend", "seed"), params)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """The chaos pipeline run once without faults on the local backend: what every scenario must match."""
    base = tmp_path_factory.mktemp("chaos-reference")
    doc = chaos_pipeline("local")
    with world(base, "local", ROOT) as w:
        path, pipeline = w.write_pipeline(doc)
        proc = w.start_controller(path)
        rc = proc.wait(timeout=300)
        assert rc == 0, "\n".join(w.logs())[-4000:]
        assert tagged(w.tag) == [] or w.leftovers() == []
        return snapshot(w.store, parse_pipeline(doc))
