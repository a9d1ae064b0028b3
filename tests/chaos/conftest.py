"""Chaos fixtures: `--seeds N` for more scenarios, the fault-free reference run made once a session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sailk8s.spec import parse_pipeline
from sailk8s.testing.chaos import Snapshot, chaos_pipeline, snapshot, world
from sailk8s.testing.chaos.world import tagged
from sailk8s.testing.containers import ci_image, images_present

ROOT = Path(__file__).resolve().parents[2]
# CI (`make test`) runs these, a few minutes on 2 cores; `--seeds N` runs seeds 1..N on every backend,
# `--seed S` (repeatable) the seeds named. In containers CI runs test_chaos_containers' fixed scenarios.
CI_SEEDS = {"local": (37, 96), "kubernetes": (1,), "containers": ()}
NO_IMAGES = pytest.mark.skipif(not images_present([ci_image("filter"), ci_image("train")]),
                               reason="needs podman, sail-filter and sail-train (make images-test)")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--seeds", type=int, default=None, help="run chaos seeds 1..N on both backends")
    parser.addoption("--seed", type=int, action="append", default=[], help="run this chaos seed (repeatable)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not {"seed", "backend"} <= set(metafunc.fixturenames):
        return
    count = metafunc.config.getoption("--seeds")
    chosen = metafunc.config.getoption("--seed")
    params = []
    for backend in ("local", "kubernetes", "containers"):
        seeds = chosen or (range(1, count + 1) if count else CI_SEEDS[backend])
        marks = [pytest.mark.slow, *([NO_IMAGES] if backend == "containers" else [])]
        params += [pytest.param(backend, s, id=f"{backend}-{s}", marks=marks) for s in seeds]
    metafunc.parametrize(("backend", "seed"), params)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """The chaos pipeline run once without faults on the local backend: what every scenario must match."""
    base = tmp_path_factory.mktemp("chaos-reference")
    doc = chaos_pipeline("local")
    with world(base, "local", ROOT) as w:
        path, _ = w.write_pipeline(doc)
        proc = w.start_controller(path)
        rc = proc.wait(timeout=300)
        assert rc == 0, "\n".join(w.logs())[-4000:]
        assert tagged(w.tag) == [] or w.leftovers() == []
        return snapshot(w.store, parse_pipeline(doc))
