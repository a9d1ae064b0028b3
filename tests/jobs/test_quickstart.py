"""examples/quickstart.yaml's data stages run end to end via `python -m jobs.<kind>` + env contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from jobs_helpers import ROOT, run_job

from jobs.core import shards as sh
from sailk8s.envcontract import stage_env
from sailk8s.spec import load_pipeline

SMALL = {"raw_digits": 40, "reference_digits": 8, "reference_photos": 2, "sft_knowledge_digits": 10,
         "sft_instruction_digits": 20, "eval_digits": 10, "duplicates": 4, "thumbnails": 2}


def samples_of(store: Path, prefix: str) -> list[sh.Sample]:
    paths = sorted((store / prefix).glob("*.tar"))
    return [s for p in paths for s in sh.read_shard(p) if isinstance(s, sh.Sample)]


@pytest.mark.slow
def test_quickstart_ingest_recaption_filter(tmp_path: Path) -> None:
    pipeline = load_pipeline(ROOT / "examples" / "quickstart.yaml")
    order = [s.name for s in pipeline.order()]
    assert order.index("ingest") < order.index("recaption") < order.index("filter")
    store = tmp_path / "store"
    for name in ("ingest", "recaption", "filter"):
        stage = pipeline.stage(name)
        env = {**os.environ, **stage_env(pipeline, stage, 1), "SAIL_STORE_URI": f"file://{store}",
               "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        # Smaller sets, and a captioner built from config instead of the fine-tuned one (the
        # training stages' tests cover that); inputs, outputs and the filter chain are the file's.
        cfg = dict(stage.config)
        if name == "ingest":
            cfg.update(samples=SMALL, shard_size=32)
        elif name == "recaption":
            # A random-init captioner writes one text for every image: the quality gate would
            # (rightly) stop it, so it is off here; tests/model/test_caption.py covers the gate.
            cfg = {k: v for k, v in cfg.items() if k != "model"} | {"preset": "tiny",
                                                                   "quality_gate": {"enabled": False}}
        else:
            # Random-init model filters measure but cannot judge: the judge's replies hold no
            # ratings (kept) and the alignment scores of a random model mean nothing (not bounded).
            untrained = {"judge": {"on_unparseable": "keep"}, "alignment": {"min_score": None}}
            cfg["filters"] = [{k: v for k, v in f.items() if k != "model"} | {"preset": "tiny"}
                              | untrained.get(f["type"], {})
                              if f.get("model") else f for f in cfg["filters"]]
        env["SAIL_STAGE_CONFIG"] = json.dumps(cfg)
        res = run_job(f"jobs.{stage.kind}", env, timeout=600)
        assert res.returncode == 0, f"{name}: {res.stderr[-3000:]}"
    raw = samples_of(store, "data/samples/raw")
    recap = samples_of(store, "data/recaptioned")
    kept = samples_of(store, "data/filtered")
    assert len(recap) == len(raw) and all("recaption" in s.meta and "alt_text" in s.meta for s in recap)
    assert 0 < len(kept) < len(recap)
    assert all("alignment" in s.meta["scores"] for s in kept)
    rep = json.loads((store / "runs/quickstart/filter/report.json").read_bytes())
    assert rep["samples_in"] == len(recap) and rep["kept"] == len(kept)
    assert rep["dropped"].get("image_too_small") == SMALL["thumbnails"]
    assert (store / rep["funnel_chart"]).stat().st_size > 1000
    cap = json.loads((store / "runs/quickstart/recaption/report.json").read_bytes())
    assert cap["samples_out"] == len(recap)
