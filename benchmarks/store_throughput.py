"""Store throughput: our S3Store vs the raw minio client, and LocalStore vs plain file copies.

S3: put then get of N shard-sized objects (default 64 x 4 MiB) through `S3Store.put/get` and
through `Minio.put_object/get_object` with default settings, against the same moto S3 server on
127.0.0.1, in alternating rounds (best round of each counts), so both sides see the same server
state. Local: `LocalStore.put_file/get_file` (durable: fsync + rename) vs `shutil.copyfile`
to a store directory and back, and vs copyfile + fsync (the same durability), same files.

    python benchmarks/store_throughput.py [--quick] [--objects 64] [--mib 4] [--rounds 4]

The last stdout line is one JSON object: benchmark, unit (MiB/s), ours/baseline/ratio for S3,
local_ours/local_baseline/local_ratio (vs plain copy) and local_baseline_fsync/local_ratio_fsync
(vs copy + fsync) for the local store.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from minio import Minio

from sailk8s.store.local import LocalStore
from sailk8s.store.s3 import S3Store
from sailk8s.testing.s3 import S3Server, s3_server

MiB = 1 << 20


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def s3_rounds(s3: S3Server, blobs: list[bytes], rounds: int) -> tuple[float, float]:
    """Best put+get MiB/s of ours and of raw minio over alternating rounds."""
    ours = s3.store("bench")
    assert isinstance(ours, S3Store)
    raw = Minio(urlsplit(s3.endpoint).netloc, access_key=s3.access_key, secret_key=s3.secret_key,
                secure=False, region=s3.region)
    total = sum(len(b) for b in blobs) * 2 / MiB  # each byte goes up and comes back

    def run_ours() -> None:
        for i, b in enumerate(blobs):
            ours.put(f"ours/{i:04d}", b)
        for i, b in enumerate(blobs):
            assert len(ours.get(f"ours/{i:04d}")) == len(b)

    def run_raw() -> None:
        for i, b in enumerate(blobs):
            raw.put_object(s3.bucket, f"bench/raw/{i:04d}", io.BytesIO(b), len(b))
        for i, b in enumerate(blobs):
            resp = raw.get_object(s3.bucket, f"bench/raw/{i:04d}")
            try:
                assert len(resp.read()) == len(b)
            finally:
                resp.close()
                resp.release_conn()

    def clean() -> None:
        for i in range(len(blobs)):
            ours.delete(f"ours/{i:04d}")
            raw.remove_object(s3.bucket, f"bench/raw/{i:04d}")

    run_ours()  # warm-up: connections, bucket region lookup
    run_raw()
    clean()
    best_ours = best_raw = 0.0
    for r in range(rounds):
        order = [("ours", run_ours), ("raw", run_raw)]
        if r % 2:
            order.reverse()  # neither side always goes first
        for name, fn in order:
            rate = total / timed(fn)
            if name == "ours":
                best_ours = max(best_ours, rate)
            else:
                best_raw = max(best_raw, rate)
        clean()
    return best_ours, best_raw


def local_rounds(files: list[Path], work: Path, rounds: int) -> dict[str, float]:
    """Best put_file+get_file MiB/s of LocalStore, shutil.copyfile, and copyfile + fsync."""
    store = LocalStore(work / "store")
    out = work / "out"
    total = sum(f.stat().st_size for f in files) * 2 / MiB

    def run_ours() -> None:
        for f in files:
            store.put_file(f"shards/{f.name}", f)
        for f in files:
            store.get_file(f"shards/{f.name}", out / "ours" / f.name)

    def copier(name: str, fsync: bool) -> Callable[[], None]:
        def run() -> None:
            (work / name / "shards").mkdir(parents=True, exist_ok=True)
            (out / name).mkdir(parents=True, exist_ok=True)
            for f in files:
                dest = work / name / "shards" / f.name
                shutil.copyfile(f, dest)
                if fsync:  # the same durability as LocalStore's put (data on disk)
                    fd = os.open(dest, os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
            for f in files:
                shutil.copyfile(work / name / "shards" / f.name, out / name / f.name)
        return run

    sides = {"ours": run_ours, "copy": copier("copy", False), "copy_fsync": copier("copy_fsync", True)}
    best = dict.fromkeys(sides, 0.0)
    for r in range(rounds):
        names = list(sides)
        names = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in names:
            best[name] = max(best[name], total / timed(sides[name]))
        for d in (store.root, work / "copy", work / "copy_fsync", out):
            shutil.rmtree(d, ignore_errors=True)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 objects, 2 rounds (well under a minute)")
    ap.add_argument("--objects", type=int, default=None)
    ap.add_argument("--mib", type=int, default=4, help="object size in MiB")
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    n = args.objects or (16 if args.quick else 64)
    rounds = args.rounds or (2 if args.quick else 4)  # even: each side goes first equally often
    size = args.mib * MiB
    blobs = [os.urandom(size) for _ in range(n)]

    with s3_server() as s3:
        s3_ours, s3_raw = s3_rounds(s3, blobs, rounds)
    with tempfile.TemporaryDirectory(prefix="sail-bench-") as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        files = []
        for i, b in enumerate(blobs):
            f = work / "src" / f"shard-{i:06d}.tar"
            f.write_bytes(b)
            files.append(f)
        local = local_rounds(files, work, rounds)

    print(f"S3 (moto, put+get of {n} x {args.mib} MiB): S3Store {s3_ours:.1f} MiB/s, "
          f"raw minio {s3_raw:.1f} MiB/s, ratio {s3_ours / s3_raw:.3f}")
    print(f"local (put_file+get_file): LocalStore {local['ours']:.1f} MiB/s, shutil.copyfile "
          f"{local['copy']:.1f} MiB/s (ratio {local['ours'] / local['copy']:.3f}), copyfile + fsync "
          f"{local['copy_fsync']:.1f} MiB/s (ratio {local['ours'] / local['copy_fsync']:.3f})")
    print(json.dumps({
        "benchmark": "store_throughput", "unit": "MiB/s",
        "ours": round(s3_ours, 1), "baseline": round(s3_raw, 1), "ratio": round(s3_ours / s3_raw, 3),
        "local_ours": round(local["ours"], 1), "local_baseline": round(local["copy"], 1),
        "local_ratio": round(local["ours"] / local["copy"], 3),
        "local_baseline_fsync": round(local["copy_fsync"], 1),
        "local_ratio_fsync": round(local["ours"] / local["copy_fsync"], 3),
        "objects": n, "object_mib": args.mib, "rounds": rounds, "server": "moto ThreadedMotoServer",
    }))


if __name__ == "__main__":
    main()
