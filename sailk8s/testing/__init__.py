"""Fakes for tests (like kopf.testing): a Kubernetes API server over real HTTP (FakeKubernetes),
the Training Operator v1 on it (FakeTrainingOperator), pod faults (behaviors), request faults."""

from sailk8s.testing import behaviors
from sailk8s.testing.apierrors import ApiError
from sailk8s.testing.apiserver import FakeKubernetes, RequestRecord
from sailk8s.testing.clock import Clock, SimulatedClock
from sailk8s.testing.faults import FaultPlan, RequestFault, WatchFault
from sailk8s.testing.operator import FakeTrainingOperator
from sailk8s.testing.waiting import wait_for

__all__ = [
    "ApiError",
    "Clock",
    "FakeKubernetes",
    "FakeTrainingOperator",
    "FaultPlan",
    "RequestFault",
    "RequestRecord",
    "SimulatedClock",
    "WatchFault",
    "behaviors",
    "wait_for",
]
