"""Pipelines for the Kubernetes backend tests: realistic stages built in code, no files needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from k8s_pipelines import make_pipeline

from sailk8s.spec import Pipeline

CRD = Path(__file__).resolve().parents[3] / "shared" / "crds" / "kubeflow.org_pytorchjobs.yaml"


@pytest.fixture
def pipeline() -> Pipeline:
    return make_pipeline()


@pytest.fixture
def crd_path() -> Path:
    if not CRD.is_file():
        pytest.skip(f"PyTorchJob CRD not found at {CRD}")
    pytest.importorskip("jsonschema")
    return CRD
