"""Example: test your own pipeline file on sailk8s.testing's fake cluster and S3 server, with chaos.

    python -m pytest examples/test_my_pipeline.py          # from the repository root
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sailk8s.spec import parse_pipeline
from sailk8s.testing.chaos import World, adapt, draw, run_scenario, snapshot
from sailk8s.testing.chaos.plugin import sail_world  # noqa: F401  (or pytest_plugins in your conftest.py)
from sailk8s.testing.chaos.scenario import StageShape

ROOT = Path(__file__).resolve().parents[1]
# Your pipeline file; here the chaos pipeline's stages as a stand-in.
PIPELINE = {
    "run": "mine",
    "stages": [
        {"name": "ingest", "kind": "ingest", "outputs": ["data/samples"],
         "resources": {"procs_per_node": 2, "cpu": "1", "memory": "1Gi"},
         "retry": {"max_attempts": 3, "backoff_base_seconds": 0.5, "backoff_cap_seconds": 2},
         "config": {"source": "samples", "shard_size": 4, "sets": ["raw"],
                    "samples": {"raw_digits": 12, "reference_digits": 1, "eval_digits": 1}}},
        {"name": "filter", "kind": "filter", "depends": ["ingest"], "inputs": ["data/samples/raw"],
         "outputs": ["data/filtered"], "resources": {"procs_per_node": 2, "cpu": "1", "memory": "1Gi"},
         "retry": {"max_attempts": 3, "backoff_base_seconds": 0.5, "backoff_cap_seconds": 2},
         "config": {"text_fields": ["alt_text"], "filters": [{"type": "dedup", "exact": True}]}},
    ],
}
SHAPES = [StageShape("ingest", True, 3), StageShape("filter", True, 3)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_my_pipeline_survives_chaos(backend: str, sail_world: Callable[..., World]) -> None:  # noqa: F811
    # 1. Without chaos: run the file once, keep what it wrote as the reference.
    doc = adapt(PIPELINE, backend)
    pipeline = parse_pipeline(doc)
    clean = sail_world(backend, ROOT)
    path, _ = clean.write_pipeline(doc)
    assert clean.start_controller(path).wait(timeout=300) == 0, clean.logs()[-1][-3000:]
    reference = snapshot(clean.store, pipeline)
    # 2. With chaos: seed 7's faults at their moments; the outputs must match the reference.
    chaotic = sail_world(backend, ROOT)
    result = run_scenario(chaotic, doc, pipeline, draw(7, backend, SHAPES), reference)
    assert result.violations == [], result.summary()
