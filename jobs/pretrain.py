"""`python -m jobs.pretrain`: SAIL-VL pretraining sub-stages (alignment: projector; advance: + vision)."""

from __future__ import annotations

from jobs.core.runtime import StageRun, main
from jobs.training.train import run_training
from sailk8s.stageconfig.pretrain import Config


def run() -> None:
    """Pretrain every sub-stage from the env contract's config."""
    stage = StageRun.from_env(Config)
    cfg = stage.typed(Config)
    run_training(stage, cfg, cfg.substages)


if __name__ == "__main__":
    main(run)
