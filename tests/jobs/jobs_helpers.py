"""Shared helpers of the workload tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from PIL import Image

from jobs.core import shards as sh
from sailk8s.testing import stopping
from sailk8s.testing.stopping import kill_once_stopped as kill_once_stopped

ROOT = Path(__file__).resolve().parents[2]


def png_bytes(size: tuple[int, int] = (48, 48), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small valid PNG."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def pattern_png(seed: int, size: int = 48, brighten: int = 0) -> bytes:
    """A PNG with a distinct pattern per seed (so pHashes differ)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arr = (rng.random((8, 8)) * 230 + brighten).astype("uint8")
    img = Image.fromarray(arr, mode="L").resize((size, size), Image.NEAREST).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def contract_env(store: Path, *, run: str = "t", stage: str, kind: str, inputs: list[str] | None = None,
                 outputs: list[str] | None = None, config: dict[str, Any] | None = None,
                 rank: int | None = None, world: int | None = None) -> dict[str, str]:
    """The env contract for one stage process against a local store."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"SAIL_RUN": run, "SAIL_STAGE": stage, "SAIL_STAGE_KIND": kind, "SAIL_ATTEMPT": "1",
                "SAIL_STORE_URI": f"file://{store}", "SAIL_INPUTS": json.dumps(inputs or []),
                "SAIL_OUTPUTS": json.dumps(outputs or []), "SAIL_STAGE_CONFIG": json.dumps(config or {}),
                "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SAIL_PROGRESS_SECONDS": "0.2"})
    if rank is not None:
        env.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    return env


def run_job(module: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m <module>` to completion."""
    return subprocess.run([sys.executable, "-m", module], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)




def raw_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with exactly these members (names unchecked: that is the point)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------------------- filter stage runs
CAPTION = "a small square image with a bold pattern of dark and light blocks"
FILTERS = [{"type": "image", "min_side": 32}, {"type": "caption", "min_words": 3},
           {"type": "dedup", "max_distance": 4, "steal_after_seconds": 5}]


def make_corpus(store: Path, n_shards: int = 6, per_shard: int = 10) -> dict[str, int]:
    """Input shards with cross-shard exact/near duplicates, small images, bad captions."""
    d = store / "in"
    d.mkdir(parents=True)
    expected = {"exact": 0, "near": 0}
    plain: set[int] = set()  # samples that keep their own pattern and pass the other filters
    for s in range(n_shards):
        with sh.ShardWriter(d / sh.shard_name(s)) as w:
            for i in range(per_shard):
                n = s * per_shard + i
                img, text = pattern_png(n), CAPTION
                if n % 9 == 4 and n - 9 in plain:
                    img = pattern_png(n - 9)  # exact copy of a kept sample earlier in (shard, key) order
                    expected["exact"] += 1
                elif n % 17 == 8 and n - 17 in plain:
                    img = pattern_png(n - 17, brighten=8)  # near copy: same pattern, shifted levels
                    expected["near"] += 1
                elif n % 13 == 6:
                    img = png_bytes((20, 20))
                elif n % 11 == 3:
                    text = "tiny"
                else:
                    plain.add(n)
                w.write(sh.Sample(f"k{n:04d}", {"recaption": text, "alt_text": "alt"}, "png", {"png": img}))
    return expected


def output_digests(store: Path) -> dict[str, str]:
    return {p.name: sh.file_sha256(p) for p in sorted((store / "out").glob("*.tar"))}


def kept_keys(store: Path) -> list[str]:
    return [s.key for p in sorted((store / "out").glob("*.tar"))
            for s in sh.read_shard(p) if isinstance(s, sh.Sample)]


def report(store: Path, stage: str = "filter") -> dict:
    return json.loads((store / "runs/t" / stage / "report.json").read_bytes())


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "jobs.filter"], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def start_stopping_after(env: dict[str, str], pattern: str, count: int,
                         module: str = "jobs.filter") -> subprocess.Popen[str]:
    """Start `module` (from the repository root); it stops itself after its `count`-th store
    write matching `pattern` (see sailk8s.testing.stopping)."""
    return stopping.start_stopping_after(env, pattern, count, module, cwd=ROOT)
