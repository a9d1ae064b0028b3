"""Samples/s through the filter stage's read-decode-write path vs a bare WebDataset loop.

ours:     the real filter stage (jobs.filter via jobs.core.runtime.StageRun.run_map) over a local
          store: download shard, read with the guarded reader, decode + image/caption checks,
          deterministic tar writer, upload, stats, done marker, report (no model filters).
baseline: webdataset 1.0.2 reading the same shards (raw bytes), PIL decode to RGB, and
          webdataset.TarWriter writing every sample back (same bytes), nothing else.
Both run in this process, alternately, best of `--repeats`; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from jobs.core import shards as sh


def make_shards(root: Path, n_shards: int, per_shard: int, size: int) -> int:
    """Input shards of PNG photos-like images (noise over gradients) with captions."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, size, dtype=np.float32)
    (root / "in").mkdir(parents=True)
    for s in range(n_shards):
        with sh.ShardWriter(root / "in" / sh.shard_name(s)) as w:
            for i in range(per_shard):
                arr = (base[None, :, None] * 0.5 + rng.random((size, size, 3)) * 120).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=85)
                w.write(sh.Sample(f"k{s:03d}{i:05d}", {"recaption": f"a noisy gradient picture number {i}",
                                                     "alt_text": "gradient"}, "jpg", {"jpg": buf.getvalue()}))
    return n_shards * per_shard


def run_ours(store: Path, run: str) -> tuple[int, float]:
    """The filter stage in-process; returns (samples, seconds)."""
    from jobs.core.runtime import StageRun
    from jobs.filter import make_processor
    from jobs.filters.chain import Chain
    from sailk8s.stageconfig.filter import Config

    cfg = {"filters": [{"type": "image", "min_side": 16}, {"type": "caption", "min_words": 2}]}
    env = {"SAIL_RUN": run, "SAIL_STAGE": "filter", "SAIL_STAGE_KIND": "filter", "SAIL_STORE_URI": f"file://{store}",
           "SAIL_INPUTS": '["in"]', "SAIL_OUTPUTS": f'["out-{run}"]', "SAIL_STAGE_CONFIG": json.dumps(cfg),
           "SAIL_PROGRESS_SECONDS": "5"}
    t0 = time.perf_counter()
    stage = StageRun.from_env(Config, env)
    chain = Chain(stage.typed(Config))
    report = stage.run_map(make_processor(chain, None), need_image=False)
    dt = time.perf_counter() - t0
    assert report is not None and report["samples_out"] == report["samples_in"]
    return report["samples_in"], dt


def run_baseline(store: Path, out: Path) -> tuple[int, float]:
    """Bare webdataset read + PIL decode + TarWriter write of the same shards."""
    import webdataset as wds

    out.mkdir(parents=True)
    n = 0
    t0 = time.perf_counter()
    for shard in sorted((store / "in").glob("*.tar")):
        with wds.TarWriter(str(out / shard.name)) as writer:
            for sample in wds.WebDataset(str(shard), shardshuffle=False):
                Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
                writer.write({"__key__": sample["__key__"], "jpg": sample["jpg"], "json": sample["json"]})
                n += 1
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small data set (well under a minute)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    args = ap.parse_args()
    n_shards, per_shard = (4, 200) if args.quick else (16, 500)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from sailk8s.logsetup import configure_logging

    configure_logging("console", "WARNING")
    root = Path(tempfile.mkdtemp(prefix="sail-bench-"))
    try:
        total = make_shards(root, n_shards, per_shard, args.size)
        ours, base = [], []
        for r in range(args.repeats):
            n, dt = run_ours(root, f"bench{r}")
            ours.append(n / dt)
            n, dt = run_baseline(root, root / f"base{r}")
            base.append(n / dt)
        best_ours, best_base = max(ours), max(base)
        print(f"{total} samples ({n_shards} shards x {per_shard}, {args.size}px jpg), "
              f"best of {args.repeats}: ours {best_ours:.0f} samples/s, baseline {best_base:.0f} samples/s")
        print(json.dumps({"benchmark": "shard_pipeline", "unit": "samples/s", "ours": round(best_ours, 1),
                          "baseline": round(best_base, 1), "ratio": round(best_ours / best_base, 3),
                          "samples": total, "shards": n_shards, "image_px": args.size,
                          "ours_all": [round(x, 1) for x in ours],
                          "baseline_all": [round(x, 1) for x in base]}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
