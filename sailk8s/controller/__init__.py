"""Drives a run: stage order, retries, adoption, run state. One code path for every Backend."""

from sailk8s.controller.driver import Controller
from sailk8s.controller.runinfo import Event, default_holder, new_run_id, progress_mark, read_progress

__all__ = ["Controller", "Event", "default_holder", "new_run_id", "progress_mark", "read_progress"]
