"""Fake Kubernetes API and training operator for tests (like kopf.testing).

`FakeKubernetes` (apiserver.py) serves the Kubernetes API over real HTTP on 127.0.0.1;
`FakeTrainingOperator` (operator.py) plays the Kubeflow Training Operator v1 on it;
`behaviors` holds the pod faults, `FaultPlan` (faults.py) the request and watch faults.
"""

from sailk8s.testing import behaviors
from sailk8s.testing.apiserver import FakeKubernetes, RequestRecord
from sailk8s.testing.clock import Clock, SimulatedClock
from sailk8s.testing.faults import FaultPlan, RequestFault, WatchFault
from sailk8s.testing.operator import FakeTrainingOperator
from sailk8s.testing.state import ApiError

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
]
