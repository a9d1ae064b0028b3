"""Drives a run: stage order, retries, adoption, run state."""
