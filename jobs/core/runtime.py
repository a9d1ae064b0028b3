"""The shared workload runtime: distributed env, shard assignment, the kill-safe shard loop.

Every data stage (`jobs.ingest`, `jobs.caption`, `jobs.filter`) is a `python -m jobs.X` /
`torchrun -m jobs.X` program built like this::

    from jobs.core.runtime import ShardInput, ShardOutput, StageRun, main
    from sailk8s.stageconfig.caption import Config

    def run() -> None:
        stage = StageRun.from_env(Config)          # env contract + config + store + rank
        def process(shard: ShardInput, out: ShardOutput) -> None:
            for sample, image in shard.decoded():  # bad samples are counted and skipped
                sample.meta["recaption"] = ...
                out.write(sample)                  # or out.drop(sample, "reason")
        stage.run_map(process, required=("alt_text",))

    if __name__ == "__main__":
        main(run)                                  # logging + errors -> exit codes

Pieces:
- `DistInfo.from_env()`: RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (0/1/0 when
  absent, so plain `python -m jobs.X` works).
- `assign_shards(shards, rank, world_size)`: pure, deterministic round robin over the sorted
  list. Assignment is over ALL shards, not the pending ones, so ranks that list the ledger
  at different moments can never disagree about who owns a shard.
- `StageRun.run_map(process)`: one output shard per input shard (same id) under
  `outputs[0]`. For each of this rank's shards that the ledger says is pending (one
  listing): download the input to a temp dir, call `process`, write the output tar locally,
  upload it (atomic put), write the shard's stats (`runs/<run>/<stage>/stats/<id>.json`),
  THEN the done marker. A kill at any moment leaves either a finished shard or one that the
  next attempt redoes from scratch, producing the same bytes (writers are deterministic).
- `StageRun.run_units(units, produce)`: the same loop for stages without input shards
  (ingest): each `WorkUnit` names an output shard that `produce(unit, out)` fills.
- Progress: every `progress_seconds` each rank writes `progress/rank-<r>.json`; rank 0 also
  sums them into `progress.json`.
- Report: when all shards are done, rank 0 sums every shard's stats (from this attempt or
  earlier ones, so the funnel covers each input sample exactly once) into `report.json`:
  samples in/out, dropped by reason, shard-level events, throughput.
- Accounting rule: for every shard, samples_in == samples_out + sum(dropped). Bad samples
  found while reading count as in + dropped under their reason (see jobs.core.shards).
- `main(fn)`: exit codes per sailk8s.exitcodes: bad config 3, missing input 4, store
  unreachable 75, anything else 1 (with a traceback in the log).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import structlog
from PIL import Image
from pydantic import BaseModel, ValidationError

from jobs.core import shards as sh
from sailk8s import exitcodes
from sailk8s.envcontract import StageContext
from sailk8s.errors import ConfigError, InputError, ObjectNotFound, StoreError
from sailk8s.ledger.paths import StagePaths
from sailk8s.ledger.shards import ShardLedger
from sailk8s.store import open_store
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)

C = TypeVar("C", bound=BaseModel)


# ---------------------------------------------------------------------------- distributed env
@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: global rank, world size, rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistInfo:
        """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; defaults make one process work."""
        env = os.environ if env is None else env

        def num(var: str, default: int) -> int:
            raw = env.get(var, "")
            try:
                return int(raw) if raw != "" else default
            except ValueError:
                raise ConfigError(f"{var} must be an integer, got {raw!r}") from None

        info = cls(num("RANK", 0), num("WORLD_SIZE", 1), num("LOCAL_RANK", 0))
        if info.world_size < 1 or not 0 <= info.rank < info.world_size:
            raise ConfigError(f"RANK={info.rank} is not in [0, WORLD_SIZE={info.world_size})")
        return info

    @property
    def is_main(self) -> bool:
        """Rank 0 aggregates progress and writes the report."""
        return self.rank == 0


T = TypeVar("T")


def assign_shards(shards: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's share: round robin over the list in sorted order. Pure and deterministic."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return sorted(shards)[rank::world_size]  # type: ignore[type-var]


# ---------------------------------------------------------------------------- work units
@dataclass(frozen=True, order=True)
class WorkUnit:
    """One shard of work: its id (ledger key), input key (None for generators), output key."""

    shard_id: str
    output_key: str
    input_key: str | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        """A producer-specific parameter of this unit."""
        return dict(self.params).get(name, default)


def list_input_shards(store: ObjectStore, prefixes: Sequence[str]) -> list[tuple[str, str]]:
    """(shard_id, key) of every `*.tar` directly under each prefix, in order.

    One input prefix keeps the file stems as ids (shard-000003); with several, ids are
    renumbered over the concatenation so they stay unique.
    """
    if not prefixes:
        raise InputError("the stage has no inputs: set `inputs:` to the prefix of its input shards")
    found: list[list[str]] = []
    for prefix in prefixes:
        base = prefix.rstrip("/") + "/"
        try:
            keys = [k for k in store.list(base) if k.endswith(".tar") and "/" not in k[len(base):]]
        except ObjectNotFound:
            keys = []
        if not keys:
            raise InputError(f"input prefix {prefix!r} has no shards (*.tar) in {store.describe(base)}")
        found.append(sorted(keys))
    if len(found) == 1:
        return [(k.rsplit("/", 1)[-1][: -len(".tar")], k) for k in found[0]]
    flat = [k for keys in found for k in keys]
    return [(sh.shard_name(i)[: -len(".tar")], k) for i, k in enumerate(flat)]


# ---------------------------------------------------------------------------- per-shard I/O
@dataclass
class ShardStats:
    """What happened to one shard's samples; summed across shards into the report."""

    samples_in: int = 0
    samples_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)  # shard-level: empty/truncated shard
    extra: Counter[str] = field(default_factory=Counter)  # stage-specific numeric counters
    # A stage-specific JSON summary of the shard (e.g. caption quality), merged by the stage itself.
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (stats files); the summary only where the stage wrote one."""
        doc = {"samples_in": self.samples_in, "samples_out": self.samples_out,
               "dropped": dict(sorted(self.dropped.items())), "events": dict(sorted(self.events.items())),
               "extra": dict(sorted(self.extra.items()))}
        return {**doc, "summary": self.summary} if self.summary else doc

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardStats:
        """Inverse of to_json."""
        return cls(int(data.get("samples_in", 0)), int(data.get("samples_out", 0)),
                   Counter(data.get("dropped", {})), Counter(data.get("events", {})),
                   Counter(data.get("extra", {})), dict(data.get("summary", {})))

    def add(self, other: ShardStats) -> None:
        """Accumulate another shard's stats."""
        self.samples_in += other.samples_in
        self.samples_out += other.samples_out
        self.dropped.update(other.dropped)
        self.events.update(other.events)
        self.extra.update(other.extra)


class ShardInput:
    """Iterates one local input shard's samples; bad ones are counted as dropped and skipped."""

    def __init__(self, unit: WorkUnit, path: Path | None, stats: ShardStats, tick: Callable[[], None],
                 required: Sequence[str] = (), need_image: bool = True,
                 max_pixels: int = sh.DEFAULT_MAX_PIXELS) -> None:
        self.unit, self.path, self.stats = unit, path, stats
        self.required, self.need_image, self.max_pixels = required, need_image, max_pixels
        self._tick = tick

    @property
    def shard_id(self) -> str:
        return self.unit.shard_id

    def __iter__(self) -> Iterator[sh.Sample]:
        if self.path is None:
            return
        for item in sh.read_shard(self.path, required=self.required, need_image=self.need_image):
            if isinstance(item, sh.BadSample):
                if item.key == "":  # shard-level: no sample behind it
                    self.stats.events[item.reason] += 1
                    log.warning("shard problem", shard=self.shard_id, reason=item.reason, detail=item.detail)
                else:
                    self.stats.samples_in += 1
                    self.stats.dropped[item.reason] += 1
                continue
            self.stats.samples_in += 1
            self._tick()
            yield item

    def decoded(self) -> Iterator[tuple[sh.Sample, Image.Image]]:
        """(sample, RGB image) pairs; undecodable images are dropped under their reason."""
        for sample in self:
            try:
                yield sample, sample.decode(self.max_pixels)
            except sh.BadSampleError as err:
                self.stats.dropped[err.reason] += 1

    def batches(self, size: int) -> Iterator[list[tuple[sh.Sample, Image.Image]]]:
        """Decoded pairs in lists of up to `size` (for batched models)."""
        batch: list[tuple[sh.Sample, Image.Image]] = []
        for pair in self.decoded():
            batch.append(pair)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch


class ShardOutput:
    """Collects one output shard: kept samples are written, dropped ones counted by reason."""

    def __init__(self, writer: sh.ShardWriter, stats: ShardStats) -> None:
        self.writer, self.stats = writer, stats

    def write(self, sample: sh.Sample) -> None:
        """Keep a sample (written to the output shard in call order)."""
        self.writer.write(sample)
        self.stats.samples_out += 1

    def drop(self, sample: sh.Sample | str, reason: str) -> None:
        """Count a sample as dropped under `reason` (a read sample that is not written)."""
        self.stats.dropped[reason] += 1

    def count(self, name: str, value: int = 1) -> None:
        """Add to a stage-specific counter reported under `extra`."""
        self.stats.extra[name] += value

    def reject(self, reason: str) -> None:
        """Count a generated or listed item that never became a sample (in + dropped)."""
        self.stats.samples_in += 1
        self.stats.dropped[reason] += 1

    def new_sample(self, key: str, meta: dict[str, Any], files: dict[str, bytes] | None = None,
                   image_ext: str | None = None) -> sh.Sample:
        """A generated sample (generator stages): counted as in, then written with write()."""
        self.stats.samples_in += 1
        return sh.Sample(key=key, meta=meta, image_ext=image_ext, files=files or {})


# ---------------------------------------------------------------------------- the stage run
ProcessShard = Callable[[ShardInput, ShardOutput], None]
ProduceUnit = Callable[[WorkUnit, ShardOutput], None]


class StageRun:
    """One stage attempt in this process: context, typed config, store, rank and the loop."""

    def __init__(self, ctx: StageContext, config: BaseModel, store: ObjectStore, dist: DistInfo,
                 *, progress_seconds: float = 5.0, wait_timeout: float = 6 * 3600.0) -> None:
        self.ctx, self.config, self.store, self.dist = ctx, config, store, dist
        self.paths = StagePaths(ctx.run, ctx.stage)
        self.ledger = ShardLedger(store, ctx.run, ctx.stage)
        self.progress_seconds = progress_seconds
        self.wait_timeout = wait_timeout
        self.log = log.bind(run=ctx.run, stage=ctx.stage, rank=dist.rank, attempt=ctx.attempt)
        self._done_items = 0
        self._total_items = 0
        self._last_progress = 0.0
        self._started = time.monotonic()
        self.shard_summaries: list[dict[str, Any]] = []  # per shard, filled by build_report

    @classmethod
    def from_env(cls, config_model: type[C], env: Mapping[str, str] | None = None) -> StageRun:
        """Build from the env contract; bad contract/config -> ConfigError, bad store URI too."""
        env = os.environ if env is None else env
        try:
            ctx = StageContext.from_env(env)
        except ValueError as err:
            raise ConfigError(f"stage environment: {err}") from None
        try:
            config = config_model.model_validate(ctx.config)
        except ValidationError as err:
            problems = [f"config.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors()]
            raise ConfigError(f"stage {ctx.stage!r}: " + "; ".join(problems), problems) from None
        store = open_store(ctx.store_uri)
        return cls(ctx, config, store, DistInfo.from_env(env),
                   progress_seconds=float(env.get("SAIL_PROGRESS_SECONDS", "5")))

    def typed(self, model: type[C]) -> C:
        """The config, typed (helps type checkers in stage code)."""
        assert isinstance(self.config, model)
        return self.config

    # -- keys ---------------------------------------------------------------------------
    def stage_key(self, *parts: str) -> str:
        """A key under runs/<run>/<stage>/."""
        return self.paths.key(*parts)

    def output_prefix(self) -> str:
        """The first output prefix (where output shards go)."""
        if not self.ctx.outputs:
            raise ConfigError(f"stage {self.ctx.stage!r} has no outputs: set `outputs:` to a store prefix")
        return self.ctx.outputs[0].rstrip("/")

    def input_units(self, prefix: str | None = None) -> list[WorkUnit]:
        """One unit per input shard, output under `prefix` (default outputs[0]) with the same id."""
        out = prefix or self.output_prefix()
        return [WorkUnit(sid, f"{out}/{sid}.tar", key)
                for sid, key in list_input_shards(self.store, self.ctx.inputs)]

    # -- loops --------------------------------------------------------------------------
    def run_map(self, process: ProcessShard, *, required: Sequence[str] = (), need_image: bool = True,
                max_pixels: int = sh.DEFAULT_MAX_PIXELS, units: list[WorkUnit] | None = None,
                finalize: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """Map every input shard through `process` into an output shard; see module docstring.

        `units`: input_units() with another output prefix (default: under outputs[0]).
        """
        units = self.input_units() if units is None else units

        def produce(unit: WorkUnit, out: ShardOutput, tmp: Path) -> None:
            assert unit.input_key is not None
            local = tmp / "input.tar"
            self.store.get_file(unit.input_key, local)
            shard = ShardInput(unit, local, out.stats, self._tick, required, need_image, max_pixels)
            process(shard, out)

        return self._loop(units, produce, finalize)

    def run_units(self, units: Sequence[WorkUnit], produce: ProduceUnit,
                  finalize: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """Fill each generated output shard with `produce` (stages without input shards)."""
        return self._loop(list(units), lambda unit, out, _tmp: produce(unit, out), finalize)

    def my_units(self, units: Sequence[WorkUnit]) -> list[WorkUnit]:
        """This rank's units (deterministic over all units)."""
        return assign_shards(units, self.dist.rank, self.dist.world_size)

    def _loop(self, units: list[WorkUnit], produce: Callable[[WorkUnit, ShardOutput, Path], None],
              finalize: Callable[[dict[str, Any]], None] | None) -> dict[str, Any] | None:
        ids = [u.shard_id for u in units]
        if len(set(ids)) != len(ids):
            raise InputError("duplicate shard ids among inputs: " + ", ".join(sorted(ids)))
        mine = self.my_units(units)
        outputs = {u.shard_id: u.output_key for u in mine}
        pending_ids = set(self.ledger.pending([u.shard_id for u in mine], outputs))
        todo = [u for u in mine if u.shard_id in pending_ids]
        self.log.info("shards", total=len(units), mine=len(mine), todo=len(todo),
                      world_size=self.dist.world_size)
        self._total_items, self._done_items = len(mine), len(mine) - len(todo)
        self._write_progress(force=True)
        for unit in todo:
            self._one(unit, produce)
            self._done_items += 1
            self._write_progress(force=True)
        if not self.dist.is_main:
            return None
        self._wait_all(units)
        report = self.build_report(units)
        if finalize is not None:
            finalize(report)
        self.write_report(report)
        return report

    def _one(self, unit: WorkUnit, produce: Callable[[WorkUnit, ShardOutput, Path], None]) -> None:
        t0 = time.monotonic()
        stats = ShardStats()
        with tempfile.TemporaryDirectory(prefix=f"sail-{unit.shard_id}-", dir=local_tmp_root()) as d:
            tmp = Path(d)
            local_out = tmp / "output.tar"
            with sh.ShardWriter(local_out) as writer:
                produce(unit, ShardOutput(writer, stats), tmp)
            lost = stats.samples_in - stats.samples_out - sum(stats.dropped.values())
            if lost:
                # A stage that neither writes nor drops a sample it read is a bug: fail loudly.
                raise RuntimeError(f"shard {unit.shard_id}: {lost} sample(s) neither written nor dropped")
            digest = sh.file_sha256(local_out)
            self.store.put_file(unit.output_key, local_out)
        stats_doc = {**stats.to_json(), "shard": unit.shard_id, "output": unit.output_key,
                     "sha256": digest, "attempt": self.ctx.attempt, "rank": self.dist.rank,
                     "seconds": round(time.monotonic() - t0, 3)}
        self.store.put(self.stage_key("stats", f"{unit.shard_id}.json"),
                       json.dumps(stats_doc, sort_keys=True).encode())
        # The marker goes last: until it exists the shard counts as not done.
        self.ledger.mark_done(unit.shard_id, unit.output_key, digest, stats.samples_out, self.ctx.attempt)
        self.log.info("shard done", shard=unit.shard_id, samples_in=stats.samples_in,
                      samples_out=stats.samples_out, dropped=dict(stats.dropped),
                      seconds=stats_doc["seconds"])

    # -- progress and report -----------------------------------------------------------
    def _tick(self) -> None:
        self._write_progress(force=False)

    def _write_progress(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < self.progress_seconds:
            return
        self._last_progress = now
        elapsed = max(now - self._started, 1e-6)
        doc = {"rank": self.dist.rank, "done": self._done_items, "total": self._total_items,
               "unit": "shards", "rate": round(self._done_items / elapsed, 4),
               "updated_at": time.time()}
        try:
            self.store.put(self.paths.rank_progress(self.dist.rank), json.dumps(doc).encode())
            if self.dist.is_main:
                self._aggregate_progress()
        except StoreError as err:  # progress is advisory: never fail a shard for it
            self.log.warning("progress not written", error=str(err))

    def _aggregate_progress(self) -> None:
        done = total = 0
        rate = 0.0
        for key in self.store.list(self.paths.progress_prefix):
            try:
                doc = json.loads(self.store.get(key))
            except (ObjectNotFound, ValueError):
                continue
            done += int(doc.get("done", 0))
            total += int(doc.get("total", 0))
            rate += float(doc.get("rate", 0.0))
        eta = (total - done) / rate if rate > 0 else None
        agg = {"done": done, "total": total, "unit": "shards", "rate": round(rate, 4),
               "eta_seconds": None if eta is None else round(eta, 1), "updated_at": time.time()}
        self.store.put(self.paths.progress, json.dumps(agg).encode())

    def _wait_all(self, units: list[WorkUnit]) -> None:
        """Rank 0 waits (polling the ledger) until every rank's shards are done."""
        ids = [u.shard_id for u in units]
        outputs = {u.shard_id: u.output_key for u in units}
        deadline = time.monotonic() + self.wait_timeout
        delay = 0.2
        while True:
            pending = self.ledger.pending(ids, outputs)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {len(pending)} shard(s) of other ranks: "
                                   + ", ".join(sorted(pending)[:5]))
            self._write_progress(force=False)
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def build_report(self, units: list[WorkUnit]) -> dict[str, Any]:
        """Sum every shard's stats file into the stage report (summaries go to `shard_summaries`)."""
        total = ShardStats()
        shard_seconds = 0.0
        this_attempt = 0
        self.shard_summaries = []
        for unit in units:
            doc = json.loads(self.store.get(self.stage_key("stats", f"{unit.shard_id}.json")))
            stats = ShardStats.from_json(doc)
            total.add(stats)
            self.shard_summaries.append(stats.summary)
            shard_seconds += float(doc.get("seconds", 0.0))
            this_attempt += int(doc.get("attempt") == self.ctx.attempt)
        wall = time.monotonic() - self._started
        return {
            "run": self.ctx.run, "stage": self.ctx.stage, "kind": self.ctx.kind,
            "attempt": self.ctx.attempt, "world_size": self.dist.world_size,
            "shards": len(units), "shards_this_attempt": this_attempt,
            **total.to_json(),
            "dropped_total": sum(total.dropped.values()),
            "wall_seconds": round(wall, 3),
            "samples_per_second": round(total.samples_in / shard_seconds, 2) if shard_seconds > 0 else None,
            "finished_at": time.time(),
        }

    def write_report(self, report: dict[str, Any]) -> None:
        """report.json for this attempt and at the stage level."""
        data = json.dumps(report, indent=2, sort_keys=True).encode()
        self.store.put(self.paths.attempt_report(self.ctx.attempt), data)
        self.store.put(self.paths.report, data)
        self.log.info("report", samples_in=report["samples_in"], samples_out=report["samples_out"],
                      dropped=report["dropped"])


# ---------------------------------------------------------------------------- entry point
def main(fn: Callable[[], Any]) -> NoReturn:
    """Run a stage's entry function: configure logging, map errors to exit codes, exit."""
    from sailk8s.logsetup import configure_logging

    configure_logging(os.environ.get("SAIL_LOG_FORMAT", "console"), os.environ.get("SAIL_LOG_LEVEL", "INFO"))
    try:
        fn()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        code = exitcodes.exit_code_for(err)
        if code == exitcodes.APP_ERROR:
            log.error("stage failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(code)
    sys.exit(exitcodes.OK)


def local_tmp_root() -> Path:
    """Where shards are staged locally ($SAIL_TMPDIR or the system temp dir)."""
    root = Path(os.environ.get("SAIL_TMPDIR") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    return root


__all__ = ["DistInfo", "ShardInput", "ShardOutput", "ShardStats", "StageRun", "WorkUnit",
           "assign_shards", "list_input_shards", "main"]
