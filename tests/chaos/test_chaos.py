"""Seeded chaos: the pipeline under drawn faults on both backends finishes as the fault-free run did."""

from __future__ import annotations

from pathlib import Path

import pytest

from sailk8s.spec import parse_pipeline
from sailk8s.testing.chaos import Snapshot, chaos_pipeline, draw, run_scenario, world
from sailk8s.testing.chaos.shapes import CHAOS_SHAPES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_seeded_scenario(backend: str, seed: int, tmp_path: Path, reference: Snapshot) -> None:
    scenario = draw(seed, backend, CHAOS_SHAPES)
    doc = chaos_pipeline(backend)
    with world(tmp_path, backend, ROOT) as w:
        result = run_scenario(w, doc, parse_pipeline(doc), scenario, reference,
                              timeout=600 if backend == "containers" else 420)
        print(result.summary())
        logs = "\n".join(w.logs())[-6000:]
    assert result.violations == [], f"{result.summary()}\n{logs}"
