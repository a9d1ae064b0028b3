"""What the controller does after an attempt ends: a pure function of its status and the counts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sailk8s.backends.base import AttemptStatus, Phase
from sailk8s.exitcodes import FailureClass
from sailk8s.spec import RetryPolicy


class Action(StrEnum):
    """The controller's next step for a stage."""

    DONE = "done"
    RETRY = "retry"
    FAIL = "fail"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Decision:
    """The next step, the wait before it, the failure class and the updated failure counts."""

    action: Action
    failure: FailureClass | None = None
    delay: float = 0.0
    cause: str | None = None
    app_failures: int = 0
    infra_failures: int = 0


def describe(status: AttemptStatus) -> str:
    """One line naming why an attempt ended: reason, message and exit code where known."""
    parts = [p for p in (status.reason, status.message) if p]
    text = ": ".join(parts) if parts else status.phase.value
    if status.exit_code is not None and f"exit code {status.exit_code}" not in text:
        text += f" (exit code {status.exit_code})"
    return text


def failure_class(status: AttemptStatus) -> FailureClass:
    """A failed attempt's class; an attempt the backend lost track of is an infra failure."""
    if status.phase is Phase.UNKNOWN:
        return FailureClass.INFRA
    return status.failure or FailureClass.APP


def decide(status: AttemptStatus, policy: RetryPolicy, app_failures: int, infra_failures: int) -> Decision:
    """The decision after an attempt ended with `status`, given the failures counted before it.

    | attempt ended                  | decision                                                    |
    |--------------------------------|-------------------------------------------------------------|
    | Succeeded                      | done                                                        |
    | Failed, class permanent        | stop at once, cause = the attempt's reason and message      |
    | Failed, class infra / Unknown  | retry after backoff(infra count) up to max_infra_retries;   |
    |                                | does not count against max_attempts                         |
    | Failed, class app (or none)    | retry after backoff(app count) while app failures <         |
    |                                | max_attempts, else stop                                     |
    | Cancelled                      | stop (the user asked for it)                                |
    """
    if status.phase is Phase.SUCCEEDED:
        return Decision(Action.DONE, app_failures=app_failures, infra_failures=infra_failures)
    if status.phase is Phase.CANCELLED:
        return Decision(Action.CANCELLED, cause="cancelled: " + describe(status),
                        app_failures=app_failures, infra_failures=infra_failures)
    cls = failure_class(status)
    why = describe(status)
    if cls is FailureClass.PERMANENT:
        return Decision(Action.FAIL, cls, cause=f"permanent failure, not retried: {why}",
                        app_failures=app_failures, infra_failures=infra_failures)
    if cls is FailureClass.INFRA:
        infra = infra_failures + 1
        if infra > policy.max_infra_retries:
            return Decision(Action.FAIL, cls, app_failures=app_failures, infra_failures=infra,
                            cause=f"infra failure, {infra - 1} infra retries exhausted: {why}")
        return Decision(Action.RETRY, cls, delay=policy.delay(infra), cause=f"infra failure: {why}",
                        app_failures=app_failures, infra_failures=infra)
    app = app_failures + 1
    if app >= policy.max_attempts:
        return Decision(Action.FAIL, cls, app_failures=app, infra_failures=infra_failures,
                        cause=f"app failure, {app} of {policy.max_attempts} attempts failed: {why}")
    return Decision(Action.RETRY, cls, delay=policy.delay(app), cause=f"app failure: {why}",
                    app_failures=app, infra_failures=infra_failures)
