"""What is done: key layout, shard markers, checkpoints, a stage's results, run state, output claims."""

from __future__ import annotations

from sailk8s.ledger.checkpoints import MANIFEST, CheckpointLedger, CorruptCheckpoint, FileEntry, Manifest
from sailk8s.ledger.digest import sha256_bytes, sha256_file
from sailk8s.ledger.paths import RunPaths, StagePaths, ckpt_dir_name, parse_ckpt_dir_name, segment, shard_key
from sailk8s.ledger.progress import ProgressReporter
from sailk8s.ledger.results import ProgressRecord, StageResults, eta, input_identity
from sailk8s.ledger.shards import ShardLedger, ShardMarker

__all__ = [
    "MANIFEST",
    "CheckpointLedger",
    "CorruptCheckpoint",
    "FileEntry",
    "Manifest",
    "ProgressRecord",
    "ProgressReporter",
    "RunPaths",
    "ShardLedger",
    "ShardMarker",
    "StagePaths",
    "StageResults",
    "ckpt_dir_name",
    "eta",
    "input_identity",
    "parse_ckpt_dir_name",
    "segment",
    "sha256_bytes",
    "sha256_file",
    "shard_key",
]
