"""Shared pytest setup: keep torch to one thread so parallel suites stay fast on 2 cores; group
tests by folder for pytest-xdist."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# `make test` runs the suite on every core (`-n auto --dist loadgroup`, pytest-xdist). Each top
# folder is one group, run on one worker: its session fixtures (a reference run, a browser, tiny
# models) are made once. The longest folders go first, so the quickstart's ten minutes overlap
# the rest instead of coming last.
FIRST = ("quickstart", "e2e", "chaos", "train", "benchmarks")
TESTS = Path(__file__).resolve().parent


def _folder(item: pytest.Item) -> str:
    parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 else "."


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_folder(item)))
    items.sort(key=lambda item: FIRST.index(_folder(item)) if _folder(item) in FIRST else len(FIRST))
