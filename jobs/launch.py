"""`python -m jobs.launch TORCHRUN-ARGS`: torchrun that exits with the failed rank's own exit code."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def exit_code_of(code: int) -> int:
    """A worker's exit status as a process exit code: -N (killed by signal N) becomes 128+N."""
    return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
    """Run torchrun with `argv`; 0, or the exit code of the first rank that failed (128+N for a signal).

    torchrun itself exits 1 whatever its workers returned, and in a pod that code is all the training
    operator and the controller see: a bad config (3, permanent) would be retried as an app failure
    and a SIGKILLed rank (137, infra) would fail the job instead of restarting the pod. This runs
    torchrun's own `run()` (same arguments, same PET_* environment) and keeps sailk8s.exitcodes.
    """
    args = parse_args(list(sys.argv[1:] if argv is None else argv))  # type: ignore[no-untyped-call]
    try:
        run(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as err:
        # The same "Root Cause" summary torchrun prints, then the code it would have lost.
        print(err.format_msg(), file=sys.stderr, flush=True)  # type: ignore[no-untyped-call]
        rank, failure = err.get_first_failure()
        code = exit_code_of(int(failure.exitcode)) or 1
        print(f"launch: rank {rank} failed first, exiting with its code {code}", file=sys.stderr, flush=True)
        return code
    except SignalException as err:  # the launcher itself got SIGTERM (preemption) or SIGINT
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
