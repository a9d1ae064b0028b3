"""The exit-code convention between workloads, backends and the controller."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ValidationError

from sailk8s.errors import ConfigError, InputError, ObjectNotFound, QualityError, StoreError, StoreUnavailable

OK = 0
APP_ERROR = 1
USAGE = 2
BAD_CONFIG = 3
BAD_INPUT = 4
QUALITY = 5
TEMPFAIL = 75
SIGKILL = 137
SIGTERM = 143


class FailureClass(StrEnum):
    """How the controller treats a failed attempt."""

    INFRA = "infra"  # retry; does not count against max_attempts (own cap)
    APP = "app"  # retry with backoff up to max_attempts, resuming from the ledger
    PERMANENT = "permanent"  # stop at once and report the cause


PERMANENT_CODES = frozenset({USAGE, BAD_CONFIG, BAD_INPUT, QUALITY})


def classify_exit_code(code: int) -> FailureClass | None:
    """None for success, else the failure class of a workload's exit code.

    With the PyTorchJob restartPolicy `ExitCode`, the training operator restarts a pod in place
    when its exit code is retryable (>= 128, i.e. killed by a signal) and fails the job for codes
    1-127. The controller then classifies the failed attempt by the same table:

    | code     | meaning                                   | class     |
    |----------|-------------------------------------------|-----------|
    | 0        | success                                   | -         |
    | 1        | unexpected error in the workload          | app       |
    | 2        | usage error (bad arguments)               | permanent |
    | 3        | bad stage config                          | permanent |
    | 4        | missing or unusable input                 | permanent |
    | 5        | a quality gate failed (degenerate output) | permanent |
    | 75       | transient dependency failure (store down) | infra     |
    | 128+N    | killed by signal N (137 SIGKILL/OOM, 143 SIGTERM/preemption) | infra |
    """
    if code == OK:
        return None
    if code < 0:  # a Popen returncode for a signal: -N
        return FailureClass.INFRA
    if code in PERMANENT_CODES:
        return FailureClass.PERMANENT
    if code == TEMPFAIL or code >= 128:
        return FailureClass.INFRA
    return FailureClass.APP


def exit_code_for(err: BaseException) -> int:
    """The exit code a workload ends with for an exception it did not handle."""
    if isinstance(err, (ConfigError, ValidationError)):
        return BAD_CONFIG
    if isinstance(err, InputError):
        return BAD_INPUT
    if isinstance(err, QualityError):
        return QUALITY
    if isinstance(err, StoreUnavailable):
        return TEMPFAIL
    if isinstance(err, ObjectNotFound):
        return BAD_INPUT
    if isinstance(err, StoreError):
        return TEMPFAIL
    return APP_ERROR
