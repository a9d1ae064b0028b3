"""A stage's results under runs/<run>/<stage>/: the one reader, writer and deleter of them all."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sailk8s.errors import ObjectNotFound, StoreError
from sailk8s.ledger.claims import read_claims
from sailk8s.ledger.digest import sha256_bytes
from sailk8s.ledger.paths import StagePaths
from sailk8s.ledger.shards import ShardLedger
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)

ATTEMPTS = "attempts"  # the only part of a stage prefix a reset keeps: attempt numbering goes on


class ProgressRecord(BaseModel):
    """What progress.json (and progress/rank-<r>.json) holds; stages add their own fields."""

    model_config = ConfigDict(extra="allow", frozen=True)

    done: float = Field(ge=0)
    total: float = Field(ge=0)
    unit: str = "shards"
    rate: float = Field(ge=0, default=0.0)  # units per second
    eta_seconds: float | None = None
    updated_at: float | None = None  # epoch seconds
    ranks: int | None = None  # in the stage record: how many rank files were summed
    attempt: int | None = None  # the attempt that wrote it (rank files of older attempts are ignored)

    @property
    def fraction(self) -> float | None:
        """done/total in 0..1, None when the total is unknown (0)."""
        return min(1.0, self.done / self.total) if self.total else None


def eta(done: float, total: float, rate: float) -> float | None:
    """Seconds left at the current rate; None when it cannot be told."""
    if rate <= 0 or total <= 0:
        return None
    return max(0.0, (total - done) / rate)


class StageResults:
    """Progress, report, archived logs, derived artefacts, completeness and reset of one stage."""

    def __init__(self, store: ObjectStore, run: str, stage: str) -> None:
        self.store = store
        self.paths = StagePaths(run, stage)
        self.shards = ShardLedger(store, run, stage)

    # -- progress ------------------------------------------------------------------------------
    def write_progress(self, rank: int, record: ProgressRecord) -> bool:
        """This rank's progress file; rank 0 then writes the stage's record. False if not written.

        The stage record sums done/total/rate over the rank files of the same attempt and keeps
        rank 0's own fields (a training stage's step, loss, tokens...). Progress is advisory: a
        store failure is logged, never raised.
        """
        try:
            self.store.put(self.paths.rank_progress(rank), record.model_dump_json().encode())
            if rank == 0:
                self._aggregate(record)
        except StoreError as err:
            log.warning("progress not written", stage=self.paths.stage, rank=rank, error=str(err))
            return False
        return True

    def _aggregate(self, own: ProgressRecord) -> None:
        done = total = rate = 0.0
        ranks = 0
        for key in self.store.list(self.paths.progress_prefix):
            rec = self._progress(key)
            if rec is None or rec.attempt != own.attempt:
                continue
            ranks += 1
            done, total, rate = done + rec.done, total + rec.total, rate + rec.rate
        # One rank (training): its own ETA, which knows its unit best; several: from the sums.
        left = own.eta_seconds if ranks == 1 else eta(done, total, rate)
        merged = own.model_copy(update={"done": done, "total": total, "rate": rate, "ranks": ranks,
                                        "eta_seconds": left})
        self.store.put(self.paths.progress, merged.model_dump_json().encode())

    def read_progress(self, rank: int | None = None) -> ProgressRecord | None:
        """The stage's progress record (or one rank's); None when absent or unreadable."""
        return self._progress(self.paths.progress if rank is None else self.paths.rank_progress(rank))

    def _progress(self, key: str) -> ProgressRecord | None:
        try:
            return ProgressRecord.model_validate_json(self.store.get(key))
        except ObjectNotFound:
            return None
        except ValidationError as err:
            log.warning("ignoring unreadable progress file", key=key, error=str(err).splitlines()[0])
            return None

    # -- report --------------------------------------------------------------------------------
    def write_report(self, attempt: int, report: Mapping[str, Any]) -> None:
        """The attempt's report.json, then the stage-level copy (the latest attempt's)."""
        data = json.dumps({**report, "attempt": attempt}, sort_keys=True, indent=1, default=str).encode()
        self.store.put(self.paths.attempt_report(attempt), data)
        self.store.put(self.paths.report, data)

    def read_report(self, attempt: int | None = None) -> dict[str, Any] | None:
        """The stage's latest report (or one attempt's); None when absent or not a JSON object."""
        key = self.paths.report if attempt is None else self.paths.attempt_report(attempt)
        try:
            data = json.loads(self.store.get(key))
        except ObjectNotFound:
            return None
        except (ValueError, UnicodeDecodeError):
            log.warning("ignoring unreadable report", key=key)
            return None
        return data if isinstance(data, dict) else None

    # -- archived logs -------------------------------------------------------------------------
    def archive_log(self, attempt: int, rank: int, data: bytes) -> str:
        """Keep one rank's log of an attempt in the store; returns its key."""
        key = self.paths.attempt_log(attempt, rank)
        self.store.put(key, data)
        return key

    def archive_log_file(self, attempt: int, rank: int, path: str | os.PathLike[str]) -> str:
        """`archive_log` from a local file (streamed); returns its key."""
        key = self.paths.attempt_log(attempt, rank)
        self.store.put_file(key, path)
        return key

    def archived_ranks(self, attempt: int) -> list[int]:
        """The ranks whose log of `attempt` is archived, in order."""
        prefix = self.paths.attempt_logs_prefix(attempt)
        ranks = []
        for key in self.store.list(prefix):
            name = key[len(prefix):]
            digits = name.removeprefix("rank-").removesuffix(".log")
            if name.startswith("rank-") and name.endswith(".log") and digits.isdigit():
                ranks.append(int(digits))
        return sorted(ranks)

    def read_archived_log(self, attempt: int, rank: int) -> bytes | None:
        """One rank's archived log of an attempt, None when it was never archived."""
        try:
            return self.store.get(self.paths.attempt_log(attempt, rank))
        except ObjectNotFound:
            return None

    # -- artifacts (charts, event files) -------------------------------------------------------
    def artifacts(self) -> list[str]:
        """Names of the stage's artifacts (relative to artifacts/), sorted; exported models excluded."""
        prefix = self.paths.artifacts_prefix
        return [key[len(prefix):] for key in self.store.list(prefix)]

    def read_artifact(self, name: str) -> bytes | None:
        """One artifact's bytes, None when absent."""
        try:
            return self.store.get(self.paths.artifact(name))
        except ObjectNotFound:
            return None

    # -- derived artefacts ---------------------------------------------------------------------
    def derived_prefix(self, name: str, basis: Mapping[str, Any]) -> str:
        """Where an artefact computed from `basis` lives: `<stage>/<name>/<hash of basis>/`.

        The basis must name everything the artefact was computed from (its config AND the
        identity of its input, see `input_identity`): a changed input then gets a new prefix
        instead of silently reusing what was computed from the old one.
        """
        digest = hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.paths.key(name, digest) + "/"

    # -- completeness and reset ----------------------------------------------------------------
    def complete(self) -> bool:
        """The stage's results are all in the store: its report, a done marker for every shard it
        reports and, for a stage that exported a model, the model's config.json (written last)."""
        return self.missing() is None

    def missing(self) -> str | None:
        """What `complete` found missing, in words; None when complete."""
        report = self.read_report()
        if report is None:
            return f"no report at {self.store.describe(self.paths.report)}"
        shards = report.get("shards")
        done = len(self.shards.done())
        if isinstance(shards, int) and shards > 0 and done < shards:
            return f"{done} of {shards} shards have a done marker"
        export = report.get("exported_to")
        if isinstance(export, str) and export and not self.store.exists(f"{export.rstrip('/')}/config.json"):
            return f"the exported model is missing ({self.store.describe(export)})"
        return None

    def reset(self) -> int:
        """Delete every result of the stage (the whole prefix but `attempts/`); how many objects."""
        keep = self.paths.key(ATTEMPTS) + "/"
        doomed = [k for k in self.store.list(self.paths.prefix) if not k.startswith(keep)]
        for key in doomed:
            self.store.delete(key)
        return len(doomed)


def input_identity(store: ObjectStore, keys: Iterable[str]) -> str:
    """A digest of what the input shards at `keys` hold.

    A shard written by a stage of the pipeline is known by its done marker's sha256 (found
    through the claim of the prefix it lies under): no byte is read. A shard no stage claims
    is hashed from its bytes.
    """
    wanted = sorted(set(keys))
    claims = read_claims(store)
    digests: dict[str, str] = {}
    by_owner: dict[tuple[str, str], list[str]] = {}
    for key in wanted:
        owner = next((c for c in claims if key.startswith(c.prefix.strip("/") + "/")), None)
        if owner is not None:
            by_owner.setdefault((owner.run, owner.stage), []).append(key)
    for (run, stage), owned in by_owner.items():
        ledger = ShardLedger(store, run, stage)
        read = (ledger.read_marker(shard) for shard in ledger.done())
        markers = {m.output: m.sha256 for m in read if m is not None}
        digests.update({k: markers[k] for k in owned if k in markers})
    for key in wanted:
        if key not in digests:
            digests[key] = sha256_bytes(store.get(key))
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
