"""The rank logs an attempt leaves in the store, read the same way by every backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from sailk8s.backends.base import AttemptRef
from sailk8s.errors import BackendError, StoreError
from sailk8s.ledger.results import StageResults
from sailk8s.store.base import ObjectStore


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
    results = StageResults(store, ref.run, ref.stage)
    try:
        ranks = [r for r in results.archived_ranks(ref.attempt) if rank is None or r == rank]
        if not ranks:
            raise BackendError(missing(store.describe(results.paths.attempt_logs_prefix(ref.attempt))))
        labelled = rank is None and (label_single or len(ranks) > 1)
        for r in ranks:
            text = (results.read_archived_log(ref.attempt, r) or b"").decode("utf-8", errors="replace")
            for line in text.splitlines():
                yield f"[rank {r}] {line}" if labelled else line
    except StoreError as err:
        raise BackendError(f"cannot read the archived logs of {ref.name}: {err}") from None
