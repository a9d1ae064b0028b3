"""What is done: key layout, shard markers, checkpoints, progress and reports (output first, marker last).

Uses only the store, spec-level names and errors; workloads and the controller share it.
"""

from __future__ import annotations

from sailk8s.ledger.checkpoints import MANIFEST, CheckpointLedger, CorruptCheckpoint, FileEntry, Manifest
from sailk8s.ledger.digest import sha256_bytes, sha256_file
from sailk8s.ledger.paths import RunPaths, StagePaths, ckpt_dir_name, parse_ckpt_dir_name, segment, shard_key
from sailk8s.ledger.progress import (
    Progress,
    ProgressRecord,
    aggregate,
    eta,
    read_progress,
    read_report,
    write_report,
)
from sailk8s.ledger.shards import ShardLedger, ShardMarker

__all__ = [
    "MANIFEST",
    "CheckpointLedger",
    "CorruptCheckpoint",
    "FileEntry",
    "Manifest",
    "Progress",
    "ProgressRecord",
    "RunPaths",
    "ShardLedger",
    "ShardMarker",
    "StagePaths",
    "aggregate",
    "ckpt_dir_name",
    "eta",
    "parse_ckpt_dir_name",
    "read_progress",
    "read_report",
    "segment",
    "sha256_bytes",
    "sha256_file",
    "shard_key",
    "write_report",
]
