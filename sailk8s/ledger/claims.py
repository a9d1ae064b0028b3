"""Output claims: which run and stage write each output prefix of a store."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from sailk8s.errors import ConfigError, ObjectNotFound
from sailk8s.store.base import ObjectStore

CLAIMS_PREFIX = "_sail/outputs/"


@dataclass(frozen=True)
class Claim:
    """One output prefix and the run and stage that write it."""

    prefix: str
    run: str
    stage: str


class OutputsClaimed(ConfigError):
    """A stage's outputs overlap outputs another run or stage already writes."""


def claim_key(prefix: str) -> str:
    """The claim object of an output prefix."""
    return f"{CLAIMS_PREFIX}{prefix.strip('/')}.json"


def read_claims(store: ObjectStore) -> list[Claim]:
    """Every claim in the store (claims are few: one per stage output of each run)."""
    claims = []
    for key in store.list(CLAIMS_PREFIX):
        if not key.endswith(".json"):
            continue
        try:
            doc = json.loads(store.get(key))
        except (ObjectNotFound, ValueError, UnicodeDecodeError):
            continue  # deleted meanwhile, or not ours: a damaged claim claims nothing
        if isinstance(doc, dict) and {"prefix", "run", "stage"} <= doc.keys():
            claims.append(Claim(str(doc["prefix"]), str(doc["run"]), str(doc["stage"])))
    return claims


def _overlap(a: str, b: str) -> bool:
    a, b = a.strip("/") + "/", b.strip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def conflicts(claims: Iterable[Claim], run: str, stage: str, prefixes: Iterable[str]) -> list[str]:
    """One line per claimed prefix of another run or stage that overlaps one of `prefixes`."""
    lines = []
    for prefix in prefixes:
        for c in claims:
            if (c.run, c.stage) != (run, stage) and _overlap(prefix, c.prefix):
                owner = f"stage {c.stage!r} of run {c.run!r}"
                lines.append(f"{prefix!r} overlaps {c.prefix!r}, written by {owner}")
    return lines


def claim_outputs(store: ObjectStore, run: str, stage: str, prefixes: Iterable[str]) -> None:
    """Record that (run, stage) writes `prefixes`; OutputsClaimed when another owner has them.

    Done markers live under the run (runs/<run>/<stage>/done), but output prefixes are shared by
    every run of a store. Without claims, a second run (or a second stage) naming the same outputs
    would redo every shard and silently overwrite the first run's results. A stage claims its
    output prefixes before its first attempt; a prefix already claimed by another run or stage,
    or nested inside or around one, is refused with the owner's name.

    Claims are objects under `_sail/outputs/<prefix>.json` (outside any data prefix, so no stage
    ever reads one as data). Two controllers claiming the same prefix in the same instant can
    both pass: the store has no conditional put; the run lock covers the common case, one run.
    """
    prefixes = [p.strip("/") for p in prefixes]
    if not prefixes:
        return
    claims = read_claims(store)
    clash = conflicts(claims, run, stage, prefixes)
    if clash:
        raise OutputsClaimed(
            f"stage {stage!r} of run {run!r} would overwrite another stage's outputs: "
            + "; ".join(clash)
            + ". Give this stage other `outputs:` (or another store), or, if those results may be "
            "overwritten, release their claim: `python -m sailk8s outputs -f FILE --release PREFIX`"
        )
    mine = {c.prefix for c in claims if (c.run, c.stage) == (run, stage)}
    for prefix in prefixes:
        if prefix not in mine:  # (a damaged claim object is replaced)
            store.put(claim_key(prefix), json.dumps({"prefix": prefix, "run": run, "stage": stage}).encode())


def release_claim(store: ObjectStore, prefix: str) -> Claim | None:
    """Delete the claim on exactly `prefix`; the claim it was, or None when there was none."""
    prefix = prefix.strip("/")
    claim = next((c for c in read_claims(store) if c.prefix == prefix), None)
    if claim is not None:
        store.delete(claim_key(prefix))
    return claim
