"""`python -m jobs.sft`: curriculum SFT, each stage starting from the previous stage's final weights."""

from __future__ import annotations

from jobs.core.runtime import StageRun, main
from jobs.training.train import run_training
from sailk8s.stageconfig.sft import Config


def run() -> None:
    """Run the curriculum in order, optionally ordering samples by a filter score."""
    stage = StageRun.from_env(Config)
    cfg = stage.typed(Config)
    run_training(stage, cfg, cfg.stages, order_by=cfg.order_by, descending=cfg.order == "descending")


if __name__ == "__main__":
    main(run)
