"""A seeded chaos harness: a fault catalogue, scenarios drawn from a seed, invariants against a reference."""

from sailk8s.testing.chaos.catalogue import BY_NAME, CATALOGUE, FaultKind, kinds_for
from sailk8s.testing.chaos.invariants import Snapshot, snapshot
from sailk8s.testing.chaos.runner import Result, run_scenario
from sailk8s.testing.chaos.scenario import Moment, Scenario, StageShape, Strike, draw
from sailk8s.testing.chaos.world import World, adapt, chaos_pipeline, world

__all__ = [
    "BY_NAME",
    "CATALOGUE",
    "FaultKind",
    "Moment",
    "Result",
    "Scenario",
    "Snapshot",
    "StageShape",
    "Strike",
    "World",
    "adapt",
    "chaos_pipeline",
    "draw",
    "kinds_for",
    "run_scenario",
    "snapshot",
    "world",
]
