"""What is done: shard markers, checkpoints, progress and reports."""
