"""Realistic pipelines for the Kubernetes tests (importable by name: conftest is not)."""

from __future__ import annotations

from typing import Any

from sailk8s.spec import Pipeline, parse_pipeline


def make_pipeline(**overrides: Any) -> Pipeline:
    """A three-stage pipeline: 1-node CPU, 4x8 GPU gang with Kueue, elastic 2..6 nodes."""
    data: dict[str, Any] = {
        "run": "r1",
        "backend": "kubernetes",
        "store": "s3://sail-data/r1",
        "namespace": "sail",
        "image": "registry.example.com/sail/sail-train:0.1.0",
        "store_secret": "sail-store-credentials",
        "stages": [
            {
                "name": "ingest",
                "kind": "ingest",
                "outputs": ["data/raw"],
                "resources": {"cpu": "2", "memory": "4Gi", "procs_per_node": 2},
            },
            {
                "name": "recaption",
                "kind": "caption",
                "config": {"model": "models/captioner"},
                "depends": ["ingest"],
                "inputs": ["data/raw"],
                "outputs": ["data/recaptioned"],
                "resources": {
                    "nodes": 4,
                    "gpus_per_node": 8,
                    "cpu": "64",
                    "memory": "512Gi",
                    "shm_size": "64Gi",
                    "image": "registry.example.com/sail/sail-caption:0.1.0",
                    "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                    "tolerations": [
                        {"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
                    ],
                    "priority_class": "training-high",
                },
                "scheduling": {
                    "gang": True,
                    "kueue_queue": "gpu-batch",
                    "queue": "training",
                    "active_deadline_seconds": 259200,
                },
            },
            {
                "name": "filter",
                "kind": "filter",
                "depends": ["recaption"],
                "inputs": ["data/recaptioned"],
                "outputs": ["data/filtered"],
                "resources": {"nodes": 4, "gpus_per_node": 8},
                "scheduling": {"elastic_min_nodes": 2, "elastic_max_nodes": 6, "gang": True},
            },
        ],
    }
    data.update(overrides)
    return parse_pipeline(data)
