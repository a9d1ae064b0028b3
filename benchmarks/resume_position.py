"""Resuming a training data position: saved cursor (ours) vs replaying the stream (baseline).

A resumed training stage must continue its data stream exactly where the checkpoint was taken.
The baseline is the previous path: read the stream again from the start of the sub-stage and
plan (tokenize) every sample up to the position, which grows with the position (every shard
passed is read again). Ours saves the stream's position with the checkpoint (jobs.training.binstream:
each source's epoch/shard/sample, the round robin's weights, and the samples the packer still
holds, by address) and restores it by reading only the shards behind those samples.

Setting: SAIL-VL-like caption samples (50-300 words, one image of 448-1344 px each: the header
gives the tile count, 256 tokens per tile, up to 6 tiles + a thumbnail), 8192-token packed
sequences, a store of WebDataset shards of 64 samples, a two-source mix. Both sides produce
the same next sequences (checked). CPU seconds of this process, one thread.

    python benchmarks/resume_position.py [--quick]
Last stdout line: JSON; "ours"/"baseline" = resumes per CPU second at the farthest position.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

torch.set_num_threads(1)

from jobs.core import shards as sh  # noqa: E402
from jobs.training.binstream import BinStream  # noqa: E402
from jobs.training.encoding import SampleEncoder  # noqa: E402
from jobs.training.mixstream import MixStream  # noqa: E402
from jobs.training.train import Trainer  # noqa: E402
from jobs.vlm import model as vlm  # noqa: E402
from sailk8s.stageconfig.training import MixEntry  # noqa: E402
from sailk8s.store.local import LocalStore  # noqa: E402

SEQ_LEN, SHARD = 8192, 64
WORDS = ["a", "the", "red", "blue", "small", "large", "photo", "of", "cat", "dog", "street", "sky", "tree"]


def build_store(root: Path, shards: int) -> LocalStore:
    """Two sources of caption shards whose images are real JPEGs of varied sizes."""
    from PIL import Image

    rng = random.Random(0)
    sizes = [(448, 448), (896, 448), (448, 1344), (1344, 896), (600, 500)]
    images = [sh.encode_image(Image.new("RGB", size, (i * 40 % 255, 90, 160)), "jpg")
              for i, size in enumerate(sizes)]
    for prefix, n in (("data/a", shards), ("data/b", max(1, shards // 4))):
        (root / prefix).mkdir(parents=True)
        for k in range(n):
            with sh.ShardWriter(root / prefix / sh.shard_name(k)) as w:
                for j in range(SHARD):
                    caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 300)))
                    w.write(sh.Sample(f"s{k:05d}{j:03d}", {"caption": caption}, "jpg",
                                      {"jpg": rng.choice(images)}))
    return LocalStore(root, durable=False)


def encoder() -> SampleEncoder:
    tiny = vlm.build_model("tiny")[1]
    proc = SimpleNamespace(tokenizer=tiny.tokenizer, image_seq_length=256,
                           image_processor=vlm.build_image_processor(448, 6))
    return SampleEncoder(proc, seq_len=SEQ_LEN, max_tiles=6)


def stream(store: LocalStore, enc: SampleEncoder) -> BinStream:
    sub = SimpleNamespace(mix=[MixEntry(prefix="data/a", weight=3.0, text_fields=["caption"]),
                               MixEntry(prefix="data/b", text_fields=["caption"])])
    t = Trainer.__new__(Trainer)
    t.cfg = SimpleNamespace(seq_len=SEQ_LEN, packing=True)  # type: ignore[assignment]
    t.dropped = Counter()
    return t.bins(sub, enc, MixStream(store, sub.mix, seed=1))  # type: ignore[arg-type]


def ids(b: Any) -> list[list[int]]:
    return [x.input_ids for x in b.items]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    positions = [50, 200] if args.quick else [100, 400, 1600]
    enc = encoder()
    with tempfile.TemporaryDirectory() as d:
        store = build_store(Path(d) / "store", 12 if args.quick else 60)
        rows = []
        for pos in positions:
            first = stream(store, enc)
            for _ in range(pos):
                next(first)
            saved = json.loads(json.dumps(first.state()))
            expected = ids(next(first))

            t0 = time.process_time()
            replay = stream(store, enc)
            for _ in range(pos):
                next(replay)
            got_replay = ids(next(replay))
            base = time.process_time() - t0

            t0 = time.process_time()
            resumed = stream(store, enc)
            resumed.restore(saved)
            got_ours = ids(next(resumed))
            ours = time.process_time() - t0
            assert got_replay == expected == got_ours, f"position {pos}: the resumed streams differ"
            rows.append((pos, ours, base, resumed.shards_read_on_restore))
            print(f"position {pos:5d} sequences: cursor {ours:6.2f} s ({resumed.shards_read_on_restore} "
                  f"shards read), replay {base:6.2f} s")
    pos, ours, base, _ = rows[-1]
    print(json.dumps({
        "benchmark": "resume_position", "unit": "resumes/s", "ours": round(1 / ours, 3),
        "baseline": round(1 / base, 3), "ratio": round(base / ours, 2),
        "seconds_by_position": {str(p): {"ours": round(o, 3), "baseline": round(b, 3)}
                                for p, o, b, _ in rows},
        "quick": args.quick,
    }))


if __name__ == "__main__":
    main()
