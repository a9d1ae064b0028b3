"""The rank logs an attempt leaves in the store, read the same way by every backend."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from sailk8s.backends.base import AttemptRef
from sailk8s.errors import BackendError, StoreError
from sailk8s.runstate import attempt_logs_prefix, rank_log_key
from sailk8s.store.base import ObjectStore

_RANK_LOG = re.compile(r"rank-(\d+)\.log")


def archived_ranks(store: ObjectStore, ref: AttemptRef) -> list[tuple[int, str]]:
    """(rank, key) of every archived rank log of the attempt, rank 0 first (one listing)."""
    found = []
    for key in store.list(attempt_logs_prefix(ref.run, ref.stage, ref.attempt)):
        m = _RANK_LOG.fullmatch(key.rsplit("/", 1)[-1])
        # Only the ledger's own key for that rank counts: not a stray file that looks like one.
        if m and key == rank_log_key(ref.run, ref.stage, ref.attempt, int(m.group(1))):
            found.append((int(m.group(1)), key))
    return sorted(found)


def archived_logs(
    store: ObjectStore,
    ref: AttemptRef,
    rank: int | None,
    *,
    missing: Callable[[str], str],
    label_single: bool = False,
) -> Iterator[str]:
    """The archived lines of one rank, or of every rank (rank 0 first) when `rank` is None.

    Lines of every rank carry `[rank r] ` when several ranks are archived, or always with
    `label_single` (as the local backend's live log does). Nothing archived raises
    BackendError(missing(where)), the backend saying what else it looked at.
    """
    try:
        keys = [(r, k) for r, k in archived_ranks(store, ref) if rank is None or r == rank]
        if not keys:
            raise BackendError(missing(store.describe(attempt_logs_prefix(ref.run, ref.stage, ref.attempt))))
        labelled = rank is None and (label_single or len(keys) > 1)
        for r, key in keys:
            text = store.get(key).decode("utf-8", errors="replace")
            for line in text.splitlines():
                yield f"[rank {r}] {line}" if labelled else line
    except StoreError as err:
        raise BackendError(f"cannot read the archived logs of {ref.name}: {err}") from None
