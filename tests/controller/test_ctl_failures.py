"""sailk8s.failures.decide: the pure table of what follows an attempt."""

from __future__ import annotations

import pytest

from sailk8s.backends.base import AttemptStatus, Phase
from sailk8s.exitcodes import FailureClass
from sailk8s.failures import Action, decide
from sailk8s.spec import RetryPolicy

APP, INFRA = FailureClass.APP, FailureClass.INFRA
POLICY = RetryPolicy(max_attempts=3, backoff_base_seconds=10, backoff_cap_seconds=30, max_infra_retries=2)


@pytest.mark.parametrize(("status", "counts", "expected"), [
    (AttemptStatus(Phase.SUCCEEDED), (2, 1), (Action.DONE, None, 0.0, 2, 1)),
    (AttemptStatus(Phase.CANCELLED, reason="Cancelled"), (0, 0), (Action.CANCELLED, None, 0.0, 0, 0)),
    (AttemptStatus(Phase.FAILED, failure=FailureClass.PERMANENT, exit_code=3), (0, 0),
     (Action.FAIL, FailureClass.PERMANENT, 0.0, 0, 0)),
    (AttemptStatus(Phase.FAILED, failure=FailureClass.APP, exit_code=1), (0, 0),
     (Action.RETRY, APP, 10.0, 1, 0)),
    (AttemptStatus(Phase.FAILED, failure=APP), (1, 5), (Action.RETRY, APP, 20.0, 2, 5)),
    (AttemptStatus(Phase.FAILED, failure=APP), (2, 0), (Action.FAIL, APP, 0.0, 3, 0)),
    (AttemptStatus(Phase.FAILED), (0, 0), (Action.RETRY, APP, 10.0, 1, 0)),  # unclassified
    (AttemptStatus(Phase.FAILED, failure=INFRA), (2, 0), (Action.RETRY, INFRA, 10.0, 2, 1)),
    (AttemptStatus(Phase.FAILED, failure=INFRA), (0, 1), (Action.RETRY, INFRA, 20.0, 0, 2)),
    (AttemptStatus(Phase.FAILED, failure=INFRA), (0, 2), (Action.FAIL, INFRA, 0.0, 0, 3)),
    (AttemptStatus(Phase.UNKNOWN), (0, 0), (Action.RETRY, INFRA, 10.0, 0, 1)),
])
def test_decide(status: AttemptStatus, counts: tuple[int, int],
                expected: tuple[Action, FailureClass | None, float, int, int]) -> None:
    d = decide(status, POLICY, *counts)
    assert (d.action, d.failure, d.delay, d.app_failures, d.infra_failures) == expected
    if d.action is Action.FAIL:
        assert d.cause
