"""The stage attempt in this process: the kill-safe shard loop, progress, the report, `main`."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from jobs.core.dist import DistInfo, assign_shards
from jobs.core.lifeline import die_with_launcher
from jobs.core.shardio import ShardInput, ShardOutput, ShardStats, WorkUnit, list_input_shards, local_tmp_root
from jobs.core.shards import DEFAULT_MAX_PIXELS, ShardWriter, file_sha256
from sailk8s import exitcodes
from sailk8s.envcontract import StageContext
from sailk8s.errors import ConfigError, InputError
from sailk8s.ledger import ProgressReporter, StageResults
from sailk8s.store import open_store
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)

C = TypeVar("C", bound=BaseModel)


ProcessShard = Callable[[ShardInput, ShardOutput], None]
ProduceUnit = Callable[[WorkUnit, ShardOutput], None]


class StageRun:
    """One stage attempt in this process: context, typed config, store, rank and the loop.

    A data stage module is built like this (bad samples are counted and skipped for it)::

        def run() -> None:
            stage = StageRun.from_env(Config)
            def process(shard: ShardInput, out: ShardOutput) -> None:
                for sample, image in shard.decoded():
                    sample.meta["recaption"] = ...
                    out.write(sample)                  # or out.drop(sample, "reason")
            stage.run_map(process, required=("alt_text",))

        if __name__ == "__main__":
            main(run)
    """

    def __init__(self, ctx: StageContext, config: BaseModel, store: ObjectStore, dist: DistInfo,
                 *, progress_seconds: float = 5.0, wait_timeout: float = 6 * 3600.0) -> None:
        self.ctx, self.config, self.store, self.dist = ctx, config, store, dist
        self.results = StageResults(store, ctx.run, ctx.stage)
        self.paths, self.ledger = self.results.paths, self.results.shards
        self.progress = ProgressReporter(self.results, rank=dist.rank, attempt=ctx.attempt,
                                         min_interval_s=progress_seconds)
        self.wait_timeout = wait_timeout
        self.log = log.bind(run=ctx.run, stage=ctx.stage, rank=dist.rank, attempt=ctx.attempt)
        self._done_items = 0
        self._total_items = 0
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
                max_pixels: int = DEFAULT_MAX_PIXELS, units: list[WorkUnit] | None = None,
                finalize: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """Map every input shard through `process` into an output shard with the same id.

        For each of this rank's shards that the ledger says is pending (one listing): download
        the input to a temp dir, call `process`, write the output tar locally, upload it, write
        the shard's stats, THEN its done marker. A kill at any moment leaves either a finished
        shard or one that the next attempt redoes from scratch, producing the same bytes.
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
            with ShardWriter(local_out) as writer:
                produce(unit, ShardOutput(writer, stats), tmp)
            lost = stats.samples_in - stats.samples_out - sum(stats.dropped.values())
            if lost:
                # A stage that neither writes nor drops a sample it read is a bug: fail loudly.
                raise RuntimeError(f"shard {unit.shard_id}: {lost} sample(s) neither written nor dropped")
            digest = file_sha256(local_out)
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
        """This rank's shards done/total (throttled unless forced); rank 0's also sums all ranks."""
        self.progress.update(self._done_items, self._total_items, force=force)

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
        """Sum every shard's stats file into the stage report (summaries go to `shard_summaries`).

        Stats from this attempt and earlier ones alike, so the report covers each input sample once.
        """
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
        self.results.write_report(self.ctx.attempt, report)
        self.log.info("report", samples_in=report["samples_in"], samples_out=report["samples_out"],
                      dropped=report["dropped"])


def main(fn: Callable[[], Any]) -> NoReturn:
    """Run a stage's entry function: configure logging, map errors to exit codes, exit.

    The codes are sailk8s.exitcodes': bad config 3, missing input 4, failed quality gate 5,
    store unreachable 75, anything else 1 (with a traceback in the log).
    """
    from sailk8s.logsetup import configure_logging

    die_with_launcher()
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
