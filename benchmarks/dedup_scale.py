"""Dedup at scale: the filter stage's partitioned passes (ours) vs the previous in-memory decide().

Synthetic index entries (random 256-bit pHashes, hash_size 16, and random 128-bit content
words), of which 5% are planted exact duplicates (an earlier entry's content and hash) and 5%
planted near duplicates (an earlier entry's hash with 1..max_distance random bits flipped,
fresh content); a copy may copy a copy, and every copy has a larger gid than its original.
They go through the real passes against a LocalStore in a temp dir (durable=False: no fsync),
each rank of each pass a separate process, one after another (two cores: running them side by
side would distort the times):

    index    rank r, shards r, r + W, ...:  dupgraph.partitioned -> dedupstore.write_index
    decide   rank r, partitions r, r + W, ...:  dedupstore.partition_edges -> write_edges
    resolve  rank r, node buckets r, r + W, ...: dedupstore.cc_round per round until no label is
             sent, then dedupstore.write_final (each bucket's drops by shard group)

"wall" counts ranks as running in parallel: the sum over passes of the slowest rank, the best
of --repeats runs (the machine may be shared; "cpu" is the CPU time of all ranks, steadier).
Peak RSS per rank is ru_maxrss in the rank's process (forkserver children, not forks of this
process), raw and minus the same process's value after its imports. bytes_per_entry_per_rank
is each pass's slope of that increment between the two largest sizes, times W, the largest over
passes and W: the "300 bytes per entry / W plus a constant" goal asks it to stay <= 300 (a pass
whose memory does not divide by W, like resolve, shows as growing with W). Inputs are written
first by a separate process, so generating them counts in no rank's memory or time.

The baseline is the previous decide() (git 93e00d8, jobs/filters/dedup.py), copied below: it
walks the entries in (shard, key) order against the kept ones, 64-bit pHashes in 13-bit
pigeonhole bands, so its work grows with N^2 / 8192. It runs on the 64-bit truncation of the
same entries (same process setup, decide() timed alone) at the sizes where it finishes within
--baseline-timeout. The extrapolation row takes the per-pass slopes between the two largest
sizes (W = 1) to 300M entries on 64 ranks with 16 partitions per rank: index memory stays
constant (one shard at a time), decide holds one partition, resolve one node bucket (its
adjacency and labels) per round; its goal is 300 bytes x N / 64 plus the smallest measured
constant. It leaves out the object store's per-request latency (the counts of objects and
GETs are printed).

    python benchmarks/dedup_scale.py [--quick]
Last stdout line: JSON; "ours"/"baseline" = entries/s (W = 1 wall) at the largest size both ran.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from jobs.filters import dedupstore
from jobs.filters import dupgraph as dg
from sailk8s.store.local import LocalStore

SHARD, PARTITIONS, MAX_DISTANCE, HASH_BYTES = 10_000, 64, 4, 32
EXACT_SHARE, NEAR_SHARE = 0.05, 0.05
ORIGINAL, EXACT_COPY, NEAR_COPY = 0, 1, 2
TARGET_ENTRIES, TARGET_RANKS, BYTES_GOAL = 300_000_000, 64, 300
MiB = 1 << 20


# -- synthetic inputs (their own process) ------------------------------------------------------
def shard_name(s: int) -> str:
    return f"shard-{s:05d}"


def generate(n: int, seed: int, out: str) -> dict[str, Any]:
    """Write the entries shard by shard (contents, phashes) and the truth (kind of each entry)."""
    rng = np.random.default_rng(seed)
    kind = np.full(n, ORIGINAL, np.int8)
    r = rng.random(n)
    kind[r < EXACT_SHARE + NEAR_SHARE] = NEAR_COPY
    kind[r < EXACT_SHARE] = EXACT_COPY
    kind[0] = ORIGINAL
    src = (rng.random(n) * np.arange(n)).astype(np.int64)  # an earlier entry, uniformly
    contents = rng.integers(0, 2**64, (n, 2), dtype=np.uint64, endpoint=False)
    phashes = rng.integers(0, 256, (n, HASH_BYTES), dtype=np.uint8)
    near = np.flatnonzero(kind == NEAR_COPY)
    bits = rng.integers(0, HASH_BYTES * 8, (len(near), MAX_DISTANCE))
    while True:  # distinct bit positions within a row, so k flips are k bits of distance
        s = np.sort(bits, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if not len(bad):
            break
        bits[bad] = rng.integers(0, HASH_BYTES * 8, (len(bad), MAX_DISTANCE))
    flips = np.zeros((len(near), HASH_BYTES), np.uint8)
    count = rng.integers(1, MAX_DISTANCE + 1, len(near))
    for j in range(MAX_DISTANCE):
        rows = np.flatnonzero(count > j)
        np.bitwise_xor.at(flips, (rows, bits[rows, j] // 8), (1 << (bits[rows, j] % 8)).astype(np.uint8))
    flip_of = np.zeros(n, np.int64)
    flip_of[near] = np.arange(len(near))
    done = kind == ORIGINAL
    while not done.all():  # a copy of a copy: fill in copies whose source is final, level by level
        ready = np.flatnonzero(~done & done[src])
        ex = ready[kind[ready] == EXACT_COPY]
        contents[ex], phashes[ex] = contents[src[ex]], phashes[src[ex]]
        nr = ready[kind[ready] == NEAR_COPY]
        phashes[nr] = phashes[src[nr]] ^ flips[flip_of[nr]]
        done[ready] = True
    root = Path(out)
    for s in range(-(-n // SHARD)):
        rows = slice(s * SHARD, min(n, (s + 1) * SHARD))
        np.savez(root / f"{shard_name(s)}.npz", contents=contents[rows], phashes=phashes[rows])
    np.save(root / "kind.npy", kind)
    return {"shards": -(-n // SHARD), "exact": int((kind == EXACT_COPY).sum()), "near": len(near)}


def load_shard(inputs: str, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(Path(inputs) / f"{shard_name(s)}.npz") as z:
        contents, phashes = z["contents"], z["phashes"]
    return dg.gid(s, np.arange(len(contents))), contents, phashes


# -- the passes, one rank per process ----------------------------------------------------------
def plan_for(shards: int) -> dedupstore.DedupPlan:
    return dedupstore.DedupPlan("dedup/", tuple(shard_name(s) for s in range(shards)), PARTITIONS,
                                MAX_DISTANCE, HASH_BYTES)


def index_pass(inputs: str, store_dir: str, shards: int, rank: int, world: int) -> dict[str, Any]:
    store, plan = LocalStore(store_dir, durable=False), plan_for(shards)
    for s in range(rank, shards, world):
        gids, contents, phashes = load_shard(inputs, s)
        parts = dg.partitioned(gids, contents, phashes, MAX_DISTANCE, PARTITIONS)
        dedupstore.write_index(store, plan, shard_name(s), parts)
    return {}


def decide_pass(inputs: str, store_dir: str, shards: int, rank: int, world: int) -> dict[str, Any]:
    store, plan = LocalStore(store_dir, durable=False), plan_for(shards)
    parts_of = {s: dedupstore.indexed_parts(store, plan, s) or {} for s in plan.shards}
    edges = 0
    for part in plan.owned(rank, world):
        found = dedupstore.partition_edges(store, plan, part, parts_of, exact=True, near=True)
        dedupstore.write_adjacency(store, plan, part, found)
        edges += len(found)
    return {"edges": edges}


def round_pass(inputs: str, store_dir: str, shards: int, rank: int, world: int, t: int) -> dict[str, Any]:
    """Round t of the label propagation on this rank's buckets (the stage's dedupstore.resolve
    does the same, waiting for the other ranks between rounds)."""
    store, plan = LocalStore(store_dir, durable=False), plan_for(shards)
    markers = dedupstore.cc_markers(store, plan, t - 1) if t else dedupstore.adjacency_markers(store, plan)
    inboxes = dedupstore.round_inboxes(plan, t, markers)
    for b in plan.owned(rank, world):
        dedupstore.cc_round(store, plan, t, b, inboxes.get(b, []))
    return {}


def final_pass(inputs: str, store_dir: str, shards: int, rank: int, world: int, t: int) -> dict[str, Any]:
    store, plan = LocalStore(store_dir, durable=False), plan_for(shards)
    for b in plan.owned(rank, world):
        dedupstore.write_final(store, plan, t, b)
    return {}


def survivors(store_dir: str, shards: int) -> tuple[np.ndarray, str]:
    """(dropped gids, digest of drops and reasons), read shard by shard as the apply pass does."""
    store, plan = LocalStore(store_dir, durable=False), plan_for(shards)
    lookup, gids, digest = dedupstore.DroppedLookup(store, plan), [], hashlib.sha256()
    for s, shard in enumerate(plan.shards):
        ranks, reasons = lookup.of(shard)
        gids.append(dg.gid(s, ranks))
        digest.update(ranks.tobytes() + reasons.tobytes())
    return np.concatenate([np.empty(0, np.uint64), *gids]), digest.hexdigest()


# -- the baseline: decide() as of 93e00d8 (jobs/filters/dedup.py), unchanged -------------------
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"


@dataclass(frozen=True, order=True)
class IndexEntry:
    """One indexed sample: (shard, key) order is the keep-first order."""

    shard: str
    key: str
    content: str  # sha256 hex of the decoded pixels
    phash: int  # 64-bit perceptual hash


def _bands(value: int, n: int) -> list[tuple[int, int]]:
    """(band index, band bits) for n bands covering 64 bits."""
    out = []
    start = 0
    for i in range(n):
        width = 64 // n + (1 if i < 64 % n else 0)
        out.append((i, (value >> start) & ((1 << width) - 1)))
        start += width
    return out


def decide(entries: Iterable[IndexEntry], *, exact: bool = True, near: bool = True,
           max_distance: int = 4) -> dict[tuple[str, str], str]:
    """(shard, key) -> reason for every duplicate to drop; the first of each group is kept."""
    dropped: dict[tuple[str, str], str] = {}
    seen_content: set[str] = set()
    n_bands = max_distance + 1
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for e in sorted(entries):
        if exact and e.content in seen_content:
            dropped[(e.shard, e.key)] = EXACT_DUPLICATE
            continue
        bands = _bands(e.phash, n_bands)
        if near:
            candidates = {h for b in bands for h in buckets.get(b, ())}
            if any(bin(e.phash ^ h).count("1") <= max_distance for h in candidates):
                dropped[(e.shard, e.key)] = NEAR_DUPLICATE
                continue
            for b in bands:
                buckets[b].append(e.phash)
        seen_content.add(e.content)
    return dropped


def baseline_pass(inputs: str, out_dir: str, shards: int, rank: int, world: int) -> dict[str, Any]:
    """The old stage's decision: every entry in memory as an IndexEntry (64-bit pHash), then decide()."""
    entries = []
    for s in range(shards):
        _, contents, phashes = load_shard(inputs, s)
        hex_contents = [c.tobytes().hex() for c in contents.astype(">u8")]
        top64 = phashes[:, :8].copy().view(">u8").ravel().tolist()
        entries += [IndexEntry(shard_name(s), f"{k:06d}", c, h)
                    for k, (c, h) in enumerate(zip(hex_contents, top64, strict=True))]
    t0 = time.perf_counter()
    dropped = decide(entries, max_distance=MAX_DISTANCE)
    seconds = time.perf_counter() - t0
    gids = np.sort(np.array([int(dg.gid(int(s[len("shard-"):]), int(k))) for s, k in dropped], np.uint64))
    np.save(Path(out_dir) / "dropped.npy", gids)
    return {"decide_seconds": seconds, "dropped": len(gids)}


PASSES: dict[str, Callable[..., dict[str, Any]]] = {
    "generate": lambda inputs, out, n, seed: generate(n, seed, inputs),
    "index": index_pass, "decide": decide_pass, "round": round_pass, "final": final_pass,
    "baseline": baseline_pass}


def _child(name: str, args: tuple[Any, ...], conn: Any) -> None:
    import scipy.sparse.csgraph  # noqa: F401 - resolve's import, before the baseline RSS

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0, c0 = time.perf_counter(), time.process_time()
    out = PASSES[name](*args)
    out.update(wall=time.perf_counter() - t0, cpu=time.process_time() - c0, rss_base=base,
               rss_peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    conn.send(out)


def in_process(name: str, *args: Any, timeout: float | None = None) -> dict[str, Any] | None:
    """Run one pass (one rank) in a fresh process; None if it did not finish within timeout."""
    ctx = mp.get_context("forkserver")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, args, send))
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            proc.terminate()
            return None
        out: dict[str, Any] = recv.recv()
    finally:
        proc.join()
    if proc.exitcode:
        raise RuntimeError(f"{name} {args} exited {proc.exitcode}")
    return out


# -- one size ----------------------------------------------------------------------------------
def score(dropped: np.ndarray, kind: np.ndarray) -> tuple[float, int]:
    """(recall of planted copies, dropped entries that were not planted)."""
    shard = (dropped >> np.uint64(32)).astype(np.int64)
    idx = shard * SHARD + (dropped & np.uint64(0xFFFFFFFF)).astype(np.int64)
    planted = kind != ORIGINAL
    hit = np.zeros(len(kind), bool)
    hit[idx] = True
    return float((hit & planted).sum() / max(1, planted.sum())), int((hit & ~planted).sum())


def run_world(inputs: str, root: Path, shards: int, world: int, n: int, kind: np.ndarray) -> dict[str, Any]:
    store_dir = root / f"store-w{world}"
    shutil.rmtree(store_dir, ignore_errors=True)
    store_dir.mkdir()
    passes: dict[str, list[dict[str, Any]]] = {}
    for name in ("index", "decide"):
        passes[name] = [in_process(name, inputs, str(store_dir), shards, r, world) or {}
                        for r in range(world)]
    # resolve: rounds until no label is sent, then the final decisions; its wall is the sum over
    # rounds of the slowest rank, its memory the largest of any rank in any round
    t, resolve = 0, []
    while True:
        resolve.append([in_process("round", inputs, str(store_dir), shards, r, world, t) or {}
                        for r in range(world)])
        markers = dedupstore.cc_markers(LocalStore(store_dir, durable=False), plan_for(shards), t)
        if not sum(m["sent"] for m in markers.values()):
            break
        t += 1
    resolve.append([in_process("final", inputs, str(store_dir), shards, r, world, t) or {}
                    for r in range(world)])
    passes["resolve"] = [{"wall": sum(max(x["wall"] for x in step) for step in resolve),
                          "cpu": sum(x["cpu"] for step in resolve for x in step),
                          "rss_peak": max(x["rss_peak"] for step in resolve for x in step),
                          "rss_base": 0, "inc": max(x["rss_peak"] - x["rss_base"] for step in resolve
                                                    for x in step)}]
    dropped, digest = survivors(str(store_dir), shards)
    recall, false = score(dropped, kind)
    shutil.rmtree(store_dir)
    row: dict[str, Any] = {"n": n, "world": world, "digest": digest, "recall": recall,
                           "false_drops": false, "edges": sum(r["edges"] for r in passes["decide"]),
                           "dropped": len(dropped), "rounds": t + 1}
    for name, ranks in passes.items():
        row[f"{name}_s"] = max(r["wall"] for r in ranks)
        row[f"{name}_cpu_s"] = sum(r["cpu"] for r in ranks)
        row[f"{name}_rss"] = max(r["rss_peak"] for r in ranks)
        row[f"{name}_inc"] = max(r.get("inc", r["rss_peak"] - r["rss_base"]) for r in ranks)
    row["wall_s"] = sum(row[f"{p}_s"] for p in passes)
    row["us_per_entry"] = row["wall_s"] / n * 1e6
    row["cpu_us_per_entry"] = sum(row[f"{p}_cpu_s"] for p in passes) / n * 1e6
    row["rss"] = max(row[f"{p}_rss"] for p in passes)
    row["inc"] = max(row[f"{p}_inc"] for p in passes)
    row["bytes_per_entry_per_rank"] = row["inc"] * world / n
    return row


def best_of(tries: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest try's times; memory, the largest over the tries; the survivors, the same in all."""
    assert len({t["digest"] for t in tries}) == 1, "a repeat resolved differently"
    row = dict(min(tries, key=lambda t: t["wall_s"]))
    for key in [k for k in row if k.endswith(("_rss", "_inc")) or k in ("rss", "inc")]:
        row[key] = max(t[key] for t in tries)
    row["bytes_per_entry_per_rank"] = row["inc"] * row["world"] / row["n"]
    return row


def run_size(n: int, worlds: list[int], baseline_upto: int, baseline_timeout: float,
             seed: int, repeats: int) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    with tempfile.TemporaryDirectory(prefix="dedup-scale-") as d:
        root = Path(d)
        inputs = root / "inputs"
        inputs.mkdir()
        gen = in_process("generate", str(inputs), "", n, seed)
        assert gen is not None
        kind = np.load(inputs / "kind.npy")
        rows = [best_of([run_world(str(inputs), root, gen["shards"], w, n, kind) for _ in range(repeats)])
                for w in worlds]
        base = None
        if n <= baseline_upto:
            out = in_process("baseline", str(inputs), str(root), gen["shards"], 0, 1,
                             timeout=baseline_timeout)
            if out is not None:
                recall, false = score(np.load(root / "dropped.npy"), kind)
                base = {"n": n, "seconds": out["decide_seconds"],
                        "us_per_entry": out["decide_seconds"] / n * 1e6,
                        "rss": out["rss_peak"], "inc": out["rss_peak"] - out["rss_base"], "recall": recall,
                        "false_drops": false, "dropped": out["dropped"]}
            else:
                base = {"n": n, "timed_out": baseline_timeout}
    return rows, base


# -- extrapolation -----------------------------------------------------------------------------
def extrapolate(small: dict[str, Any], large: dict[str, Any], n: int, ranks: int,
                partitions: int) -> dict[str, Any]:
    """Per-pass slopes (W = 1) between two sizes, taken to n entries on `ranks` ranks.

    Every pass splits over the ranks; decide's and resolve's memory follow one partition (node
    bucket) at a time: n / partitions. Resolve's time includes its rounds as measured (their
    number grows with the largest component's diameter, not with n)."""
    dn = large["n"] - small["n"]

    def slope(key: str) -> float:
        return max(0.0, (large[key] - small[key]) / dn)

    per_rank = n / ranks
    seconds = {"index": slope("index_s") * per_rank, "decide": slope("decide_s") * per_rank,
               "resolve": slope("resolve_s") * per_rank}
    memory = {"index": float(large["index_inc"]),  # one shard at a time: constant
              "decide": slope("decide_inc") * PARTITIONS * n / partitions,
              "resolve": slope("resolve_inc") * PARTITIONS * n / partitions}
    constant = min(small[f"{p}_inc"] for p in ("index", "decide", "resolve"))
    return {"n": n, "ranks": ranks, "partitions": partitions, "seconds": sum(seconds.values()),
            "seconds_by_pass": seconds, "rss_inc": max(memory.values()), "rss_inc_by_pass": memory,
            "budget": BYTES_GOAL * per_rank + constant,
            "index_objects": -(-n // SHARD),  # one packed object per shard
            "decide_gets_per_rank": -(-n // SHARD) * -(-partitions // ranks)}


# -- report ------------------------------------------------------------------------------------
def mib(b: float) -> str:
    return f"{b / MiB:7.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")], default=None)
    ap.add_argument("--baseline-upto", type=int, default=None, help="largest size the old decide() runs at")
    ap.add_argument("--baseline-timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=None, help="runs per size and W, best wall kept "
                    "(default 1 with --quick, else 2)")
    args = ap.parse_args()
    sizes = args.sizes or ([100_000, 400_000] if args.quick else [100_000, 1_000_000, 4_000_000])
    baseline_upto = args.baseline_upto
    if baseline_upto is None:
        baseline_upto = 100_000 if args.quick else 1_000_000
    worlds = [1, 4]
    repeats = args.repeats or (1 if args.quick else 2)
    t_start = time.perf_counter()
    print(f"entries of {HASH_BYTES * 8}-bit pHash + 128-bit content, {EXACT_SHARE:.0%} exact + "
          f"{NEAR_SHARE:.0%} near copies (1..{MAX_DISTANCE} bits), shards of {SHARD}, "
          f"{PARTITIONS} partitions; ranks run one after another, wall = slowest rank per pass "
          f"(best of {repeats}), cpu = all ranks; RSS per rank: raw / increment after imports")
    head = (f"{'entries':>9} {'W':>2} {'index s':>8} {'decide s':>8} {'resolve s':>9} {'wall s':>7} "
            f"{'us/entry':>8} {'cpu us/e':>8} {'RSS MiB':>7} {'+inc MiB':>8} {'B/entry/rank':>12} "
            f"{'recall':>6} {'false':>5}")
    print(head)
    rows: list[dict[str, Any]] = []
    bases: list[dict[str, Any]] = []
    for n in sizes:
        got, base = run_size(n, worlds, baseline_upto, args.baseline_timeout, args.seed, repeats)
        for r in got:
            rows.append(r)
            print(f"{n:>9} {r['world']:>2} {r['index_s']:8.2f} {r['decide_s']:8.2f} {r['resolve_s']:9.2f} "
                  f"{r['wall_s']:7.2f} {r['us_per_entry']:8.2f} {r['cpu_us_per_entry']:8.2f} "
                  f"{mib(r['rss'])} {mib(r['inc']):>8} "
                  f"{r['bytes_per_entry_per_rank']:12.1f} {r['recall']:6.4f} {r['false_drops']:5d}")
        print(f"{'':>9}    by pass +inc MiB: " + "; ".join(
            f"W={r['world']}: index {mib(r['index_inc']).strip()}, decide {mib(r['decide_inc']).strip()}, "
            f"resolve {mib(r['resolve_inc']).strip()}" for r in got)
            + f"; {got[0]['edges']} edges, {got[0]['dropped']} dropped")
        print(f"{'':>9}    by pass CPU s (all ranks): " + "; ".join(
            f"W={r['world']}: " + ", ".join(f"{p} {r[f'{p}_cpu_s']:.2f}"
                                            for p in ("index", "decide", "resolve")) for r in got))
        if base is None:
            print(f"{n:>9}  decide() (old): skipped (above --baseline-upto {baseline_upto})")
        elif "timed_out" in base:
            print(f"{n:>9}  decide() (old): did not finish within {base['timed_out']:.0f} s")
        else:
            bases.append(base)
            print(f"{n:>9}  decide() (old) {base['seconds']:8.2f} s  {base['us_per_entry']:8.2f} us/entry  "
                  f"RSS {mib(base['rss']).strip()} MiB (+{mib(base['inc']).strip()})  "
                  f"recall {base['recall']:.4f}  "
                  f"false {base['false_drops']}")
    w1 = [r for r in rows if r["world"] == 1]
    same = all(len({r["digest"] for r in rows if r["n"] == n}) == 1 for n in sizes)
    growth = w1[-1]["us_per_entry"] / w1[0]["us_per_entry"]
    growth_cpu = w1[-1]["cpu_us_per_entry"] / w1[0]["cpu_us_per_entry"]
    # Bytes per entry per rank beyond a constant: each pass's slope of its peak increment between
    # the two largest sizes, times W; the largest over passes and world sizes (a pass whose memory
    # does not divide by W shows up as growing with W).
    slopes = {(w, p): (big[f"{p}_inc"] - small[f"{p}_inc"]) * w / (big["n"] - small["n"])
              for w in worlds for small, big in [[r for r in rows if r["world"] == w][-2:]]
              for p in ("index", "decide", "resolve")}
    marginal = max(slopes.values())
    ex = extrapolate(w1[-2], w1[-1], TARGET_ENTRIES, TARGET_RANKS, 16 * TARGET_RANKS)
    print(f"extrapolated {ex['n']:.0e} entries on {ex['ranks']} ranks, {ex['partitions']} partitions "
          f"(W = 1 slopes, {w1[-2]['n']}..{w1[-1]['n']}): {ex['seconds']:.0f} s per rank ("
          + ", ".join(f"{p} {s:.0f} s" for p, s in ex["seconds_by_pass"].items())
          + f"), peak +{ex['rss_inc'] / MiB:.0f} MiB per rank ("
          + ", ".join(f"{p} {b / MiB:.0f}" for p, b in ex["rss_inc_by_pass"].items())
          + f" MiB) vs goal {ex['budget'] / MiB:.0f} MiB; {ex['index_objects']:.2e} index objects, "
          f"{ex['decide_gets_per_rank']:.2e} GETs per rank in decide")
    recall = min(r["recall"] for r in rows)
    false = max(r["false_drops"] for r in rows)
    both = [b for b in bases if any(r["n"] == b["n"] for r in w1)]
    at = both[-1] if both else None
    ours_row = next(r for r in w1 if at is None or r["n"] == at["n"])
    ours = ours_row["n"] / ours_row["wall_s"]
    baseline = at["n"] / at["seconds"] if at else 0.0
    print("B/entry/rank by pass (slope x W): " + "; ".join(
        f"W={w}: " + ", ".join(f"{p} {slopes[w, p]:.0f}" for p in ("index", "decide", "resolve"))
        for w in worlds))
    met = {"growth": growth <= 2, "bytes_per_entry_per_rank": marginal <= BYTES_GOAL, "recall": recall == 1.0,
           "false_drops": false == 0, "identical_across_world_sizes": same,
           "extrapolated_memory": ex["rss_inc"] <= ex["budget"]}
    print(f"goals: growth {growth:.2f} (cpu {growth_cpu:.2f}; <= 2), {marginal:.0f} B/entry/rank "
          f"(<= {BYTES_GOAL}), recall {recall:.4f} (1.0), false drops {false} (0), identical across W "
          f"{same}, extrapolated memory {ex['rss_inc'] / MiB:.0f} MiB (<= {ex['budget'] / MiB:.0f}); "
          f"not met: {', '.join(k for k, ok in met.items() if not ok) or 'none'}; "
          f"{time.perf_counter() - t_start:.0f} s in all")
    print(json.dumps({
        "benchmark": "dedup_scale", "unit": "entries/s", "ours": round(ours, 1),
        "baseline": round(baseline, 1),
        "ratio": round(ours / baseline, 2) if baseline else None, "at_entries": ours_row["n"],
        "growth": round(growth, 3), "growth_cpu": round(growth_cpu, 3),
        "bytes_per_entry_per_rank": round(marginal, 1),
        "bytes_per_entry_per_rank_by_pass": {f"{p}_w{w}": round(b, 1) for (w, p), b in slopes.items()},
        "bytes_per_entry_per_rank_at_largest": {str(r["world"]): round(r["bytes_per_entry_per_rank"], 1)
                                               for r in rows if r["n"] == sizes[-1]},
        "recall": recall, "false_drops": false, "identical_across_world_sizes": same,
        "us_per_entry": {str(r["n"]): round(r["us_per_entry"], 3) for r in w1},
        "cpu_us_per_entry": {str(r["n"]): round(r["cpu_us_per_entry"], 3) for r in w1},
        "baseline_us_per_entry": {str(b["n"]): round(b["us_per_entry"], 3) for b in bases},
        "extrapolated": {"entries": ex["n"], "ranks": ex["ranks"], "partitions": ex["partitions"],
                         "seconds_per_rank": round(ex["seconds"], 1),
                         "rss_inc_mib_per_rank": round(ex["rss_inc"] / MiB, 1),
                         "goal_mib_per_rank": round(ex["budget"] / MiB, 1)},
        "goals_met": met,
        "seconds": round(time.perf_counter() - t_start, 1), "quick": args.quick, "repeats": repeats,
    }))


if __name__ == "__main__":
    main()
