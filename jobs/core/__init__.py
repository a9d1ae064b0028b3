"""What every stage shares: WebDataset shards, the kill-safe shard loop, the built-in samples."""
