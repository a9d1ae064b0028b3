"""Each benchmark's --quick run ends in the JSON line the conventions ask for.

The figures themselves are not asserted (timings belong in benchmarks/, not in unit tests);
what is pinned is that the scripts run against the current code and report both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _has_vllm() -> bool:
    """vLLM importable here, or the vLLM venv that benchmarks/caption_engines.py re-runs itself in."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("vllm")
    return (spec is not None and spec.origin is not None) or bool(os.environ.get("SAIL_VLLM_PYTHON")) \
        or (ROOT / ".venv-vllm" / "bin" / "python").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["store_throughput", "shard_pipeline", "packing", "controller_overhead",
                                  "resume_position", "recaption_ablation", "dedup_scale",
                                  "caption_engines"])
@pytest.mark.timeout(900)
def test_quick_run_prints_the_result_line(name: str) -> None:
    if name == "caption_engines" and not _has_vllm():
        pytest.skip("no vLLM here and no vLLM venv (`make vllm-venv`)")
    # The ablation runs a small pipeline end to end (data stages, three pretrainings, probes).
    timeout = 600 if name == "recaption_ablation" else 240
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick"],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["benchmark"] == name
    assert {"unit", "ours", "baseline", "ratio"} <= set(line)
    assert line["ours"] > 0 and line["baseline"] > 0
    # Higher is better: ours/baseline for rates, baseline/ours for counts where fewer is better.
    fewer_is_better = line["unit"] == "requests"
    expected = line["baseline"] / line["ours"] if fewer_is_better else line["ours"] / line["baseline"]
    assert line["ratio"] == pytest.approx(expected, rel=0.01)
