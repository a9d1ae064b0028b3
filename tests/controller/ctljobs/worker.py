"""The fake stage: writes output shards, then done markers, progress.json and report.json."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

from sailk8s.envcontract import StageContext
from sailk8s.store import open_store


def main() -> int:
    ctx = StageContext.from_env(os.environ)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    conf = json.loads(os.environ.get("CTL_FAKE", "{}")).get(ctx.stage, {})
    store = open_store(ctx.store_uri)
    base = f"runs/{ctx.run}/{ctx.stage}"
    shards = int(conf.get("shards", 3))
    fail_code = conf.get("fail", {}).get(str(ctx.attempt))
    fail_rank = int(conf.get("fail_rank", 0))
    print(f"start stage={ctx.stage} attempt={ctx.attempt} rank={rank}/{world} pid={os.getpid()}", flush=True)
    if fail_code is not None and rank == fail_rank and int(conf.get("fail_after", 0)) == 0:
        print(f"failing with exit code {fail_code}", flush=True)
        return int(fail_code)
    if conf.get("gate"):  # hold every shard until the test opens the gate (a file appears)
        while not os.path.exists(conf["gate"]):
            time.sleep(0.05)
    done_here = 0
    for i in range(shards):
        if i % world != rank:
            continue
        marker = f"{base}/done/shard-{i:06d}.json"
        if store.exists(marker):
            print(f"shard {i} already done", flush=True)
            continue
        if conf.get("hang"):
            print("hanging", flush=True)
            while True:
                time.sleep(1)
        time.sleep(float(conf.get("sleep", 0.05)))
        out = f"{ctx.outputs[0]}/shard-{i:06d}.tar" if ctx.outputs else f"{base}/out/shard-{i:06d}.tar"
        store.put(out, f"{ctx.stage}:{i}".encode())
        store.put(f"{base}/writes/shard-{i:06d}-{uuid.uuid4().hex}", str(ctx.attempt).encode())
        store.put(marker, json.dumps({"output": out, "attempt": ctx.attempt}).encode())
        done_here += 1
        done = sum(1 for k in store.list(f"{base}/done/"))
        store.put(f"{base}/progress.json", json.dumps({"done": done, "total": shards, "unit": "shards",
                                                        "updated_at": time.time()}).encode())
        print(f"shard {i} done", flush=True)
        if fail_code is not None and rank == fail_rank and done_here >= int(conf.get("fail_after", 0)):
            print(f"failing with exit code {fail_code}", flush=True)
            return int(fail_code)
    if rank == 0:
        while sum(1 for _ in store.list(f"{base}/done/")) < shards:
            time.sleep(0.05)
        store.put(f"{base}/report.json", json.dumps({"shards": shards, "attempt": ctx.attempt}).encode())
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
