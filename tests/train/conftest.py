"""Fixtures for the training tests: a store with small built-in sample sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import run_stage


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with small built-in sample sets under data/samples/<set>/ (written by jobs.ingest)."""
    store = tmp_path_factory.mktemp("store") / "store"
    store.mkdir()
    proc = run_stage(store, {
        "name": "ingest", "kind": "ingest", "outputs": ["data/samples"],
        "config": {"source": "samples", "shard_size": 128,
                   "sets": ["reference", "sft-instruction", "eval"],
                   "samples": {"raw_digits": 40, "reference_digits": 40, "reference_photos": 4,
                               "sft_knowledge_digits": 0, "sft_instruction_digits": 160,
                               "eval_digits": 40, "duplicates": 0, "thumbnails": 0, "image_size": 64}},
    }, run="data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return store
