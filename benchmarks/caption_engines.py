"""Caption throughput of the two inference engines on CPU: vLLM vs transformers generate(), batched.

Both engines caption the same real images (scikit-learn digits and scikit-image photos, 1-4
tiles, all distinct so vLLM's encoder cache serves no image twice) with the same tiny exported
model (`tiny-vllm`, large random weights so captions vary), the same recaption prompts, greedy,
fp32, one thread each, in the caption stage's batches.
Captions are compared token for token.

    python benchmarks/caption_engines.py [--quick] [--batch-size 32] [--max-new-tokens 24]

vLLM lives in its own venv (`make vllm-venv`): run from the main venv, the script re-runs itself
there (or under $SAIL_VLLM_PYTHON). The last stdout line is one JSON object: benchmark, unit
(images/s), ours (vLLM), baseline (transformers), ratio (ours/baseline), identical (the share of
token-identical greedy captions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def vllm_python() -> str | None:
    """The interpreter of the vLLM venv: $SAIL_VLLM_PYTHON, else the Makefile's .venv-vllm."""
    env = os.environ.get("SAIL_VLLM_PYTHON")
    if env:
        return env
    default = ROOT / ".venv-vllm" / "bin" / "python"
    return str(default) if default.exists() else None


def reexec_in_vllm_venv() -> None:
    """Re-run the running script in the vLLM venv when vLLM is not importable here (the main venv)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.origin is not None:
        return
    py = vllm_python()
    if py is None:
        sys.exit("caption_engines: vLLM is not installed here and no vLLM venv was found: "
                 "run `make vllm-venv` (or set SAIL_VLLM_PYTHON)")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    os.execve(py, [py, str(Path(sys.argv[0]).resolve()), *sys.argv[1:]], env)  # the running script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 images (under a minute or two)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    reexec_in_vllm_venv()
    # One thread each, the engine in this process: stable figures on shared cores.
    os.environ.update(OMP_NUM_THREADS="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1",
                      VLLM_CPU_OMP_THREADS_BIND="nobind", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    sys.path.insert(0, str(ROOT / "tests" / "engines"))
    import torch
    from vllmkit import mixed_images, noisy_tiny_export

    from jobs.caption import prompt_for
    from jobs.vlm.engine import ModelSource, Sampling, open_engine
    from sailk8s.stageconfig.caption import Config

    torch.set_num_threads(1)
    n = 64 if args.quick else 256
    images = mixed_images(n)
    cfg = Config(preset="tiny-vllm", mode="recaption", max_tiles=4)
    metas = [{"alt_text": f"handwritten digit {i % 10}"} if i % 5 else {} for i in range(n)]
    prompts = [prompt_for(cfg, meta)[1] for meta in metas]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)

    with tempfile.TemporaryDirectory(prefix="caption-engines-") as tmp:
        export = noisy_tiny_export(Path(tmp) / "model")
        source = ModelSource(model=str(export), dtype="float32", max_tiles=cfg.max_tiles)
        results = {}
        for name in ("hf", "vllm"):
            t0 = time.perf_counter()
            engine = open_engine(name, source, max_new_tokens=args.max_new_tokens)
            start = time.perf_counter() - t0
            try:
                engine.generate(mixed_images(8, start=n), prompts[:8], sampling)  # warm-up, other images
                t0 = time.perf_counter()
                outs = []
                for i in range(0, n, args.batch_size):
                    outs += engine.generate(images[i:i + args.batch_size], prompts[i:i + args.batch_size],
                                            sampling)
                seconds = time.perf_counter() - t0
            finally:
                engine.close()
            results[name] = (n / seconds, outs, start)
    ours, theirs = results["vllm"], results["hf"]
    same = sum(a == b for a, b in zip(ours[1], theirs[1], strict=True))
    print(f"vLLM: {ours[0]:.1f} images/s (start {ours[2]:.1f} s); transformers: {theirs[0]:.1f} images/s "
          f"(start {theirs[2]:.1f} s); token-identical greedy captions: {same}/{n}")
    print(json.dumps({
        "benchmark": "caption_engines", "unit": "images/s", "ours": round(ours[0], 2),
        "baseline": round(theirs[0], 2), "ratio": round(ours[0] / theirs[0], 3),
        "identical": round(same / n, 4), "images": n, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "engine_start_s": {"vllm": round(ours[2], 1),
                                                                   "hf": round(theirs[2], 1)},
        "device": "cpu", "threads": 1, "model": "tiny-vllm", "dtype": "float32",
    }))


if __name__ == "__main__":
    main()
