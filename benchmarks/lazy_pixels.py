"""Data preparation per training rank: lazy pixels (plan all, tile own) vs every rank tiling every image.

jobs.training.train packs the same sequences on every rank and each rank trains on its share. The
baseline is the previous data path: every rank decodes and tiles EVERY image (then packs, and
keeps 1/world of the sequences). Ours is the current one: every rank plans every sample (text
tokens + tile count from the image header) and decodes + tiles only the images of its own
sequences (jobs.training.encoding.SampleEncoder.plan / materialize). A resumed run replays the data position:
`replay_*` time that replay (the baseline tiles everything again, ours tiles nothing).

Setting: SAIL-VL-like tiling (448 px tiles, up to 6 tiles + a thumbnail, 256 tokens per tile,
8192-token sequences) over real photos (skimage.data, JPEG, several crops per photo for varied
aspect ratios), captions of 50-300 words; world size 8, this process is rank 0. One thread,
CPU seconds of this process (robust to other load on a shared machine).

    python benchmarks/lazy_pixels.py [--quick]
Last stdout line: JSON; "ours"/"baseline" = sequences prepared per CPU second for one rank of 8.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

torch.set_num_threads(1)

from jobs.core import shards as sh  # noqa: E402
from jobs.training.encoding import Dropped, ImageRef, SampleEncoder  # noqa: E402
from jobs.training.packing import Bin, StreamPacker, TokenizedSample  # noqa: E402
from jobs.vlm import model as vlm  # noqa: E402

SEQ_LEN, WORLD, RANK = 8192, 8, 0
WORDS = ["a", "the", "red", "blue", "small", "large", "photo", "of", "cat", "dog", "street", "sky", "tree",
         "man", "woman", "car", "sign", "text", "on"]


def photos() -> list[bytes]:
    """JPEG crops of skimage's colour photos: real image data at real sizes and aspect ratios."""
    from PIL import Image
    from skimage import data as sk

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
        img = Image.fromarray(getattr(sk, name)()).convert("RGB")
        w, h = img.size
        for box in ((0, 0, w, h), (0, 0, w, h // 3), (0, 0, w // 3, h), (w // 4, h // 4, w, h)):
            out.append(sh.encode_image(img.crop(box), "jpg"))
    return out


def samples(n: int) -> list[tuple[dict[str, Any], bytes]]:
    rng = random.Random(0)
    images = photos()
    out = []
    for _ in range(n):
        caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 300)))
        out.append(({"caption": caption}, rng.choice(images)))
    return out


def encoder() -> SampleEncoder:
    tiny = vlm.build_model("tiny")[1]
    proc = SimpleNamespace(tokenizer=tiny.tokenizer, image_seq_length=256,
                           image_processor=vlm.build_image_processor(448, 6))
    return SampleEncoder(proc, seq_len=SEQ_LEN, max_tiles=6)


def tiles_of(enc: SampleEncoder, b: Bin) -> list[int]:
    """Materialize one sequence (a no-op for eager samples); its tiles per sample."""
    items = [enc.materialize(s) for s in b.items]
    return [int(s.pixel_values.shape[0]) for s in items
            if not isinstance(s, Dropped) and s.pixel_values is not None]


def prepare(enc: SampleEncoder, data: list[tuple[dict[str, Any], bytes]], n_bins: int, *, lazy: bool,
            train: bool) -> tuple[list[list[int]], float]:
    """Tiles per sample of this rank's sequences among the first n_bins, and the CPU seconds it took."""
    t0 = time.process_time()
    packer = StreamPacker(SEQ_LEN)
    made: list[list[int]] = []
    emitted = 0
    for meta, raw in itertools.cycle(data):
        if lazy:
            s = enc.plan(meta, ImageRef.of_bytes(raw), "caption", text_fields=("caption",))
        else:
            s = enc.encode(meta, sh.decode_image(raw), "caption", text_fields=("caption",))
        assert isinstance(s, TokenizedSample), s
        for b in packer.add(s):  # other ranks' sequences are dropped at once, as in training
            if train and emitted % WORLD == RANK and emitted < n_bins:
                made.append(tiles_of(enc, b))
            emitted += 1
        if emitted >= n_bins:
            break
    return made, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_bins, rounds = (16, 1) if args.quick else (100, 3)
    enc = encoder()
    data = samples(400)
    for lazy in (True, False):  # warm-up: allocator, tokenizer caches
        prepare(enc, data, 2, lazy=lazy, train=True)
    times: dict[str, list[float]] = {"ours": [], "base": [], "replay_ours": [], "replay_base": []}
    for _ in range(rounds):  # interleaved rounds, median per mode: load changes hit both alike
        ours_tiles, t = prepare(enc, data, n_bins, lazy=True, train=True)
        times["ours"].append(t)
        base_tiles, t = prepare(enc, data, n_bins, lazy=False, train=True)
        times["base"].append(t)
        assert ours_tiles == base_tiles, "lazy and eager paths disagree on this rank's tiles"
        times["replay_ours"].append(prepare(enc, data, n_bins, lazy=True, train=False)[1])
        times["replay_base"].append(prepare(enc, data, n_bins, lazy=False, train=False)[1])
    ours_s, base_s, replay_ours, replay_base = (statistics.median(times[k]) for k in times)
    ours, base = n_bins / ours_s, n_bins / base_s
    print(f"rank {RANK} of {WORLD}, {n_bins} sequences of {SEQ_LEN} tokens: lazy {ours_s:.2f} s, "
          f"eager {base_s:.2f} s; resume replay: lazy {replay_ours:.2f} s, eager {replay_base:.2f} s")
    print(json.dumps({
        "benchmark": "lazy_pixels", "unit": "sequences prepared per CPU second (one rank of 8)",
        "ours": round(ours, 3), "baseline": round(base, 3), "ratio": round(ours / base, 3),
        "seconds_per_100_sequences_ours": round(ours_s * 100 / n_bins, 3),
        "seconds_per_100_sequences_baseline": round(base_s * 100 / n_bins, 3),
        "replay_seconds_per_100_ours": round(replay_ours * 100 / n_bins, 3),
        "replay_seconds_per_100_baseline": round(replay_base * 100 / n_bins, 3),
        "sequences": n_bins, "world_size": WORLD, "seq_len": SEQ_LEN, "tile_px": 448, "max_tiles": 6}))


if __name__ == "__main__":
    main()
