"""The DeepSpeed and plain torch engines make the same update for the same normalised loss."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from jobs.training.engine import make_engine
from jobs.training.train import _dist_env, lr_at, progress_of
from sailk8s.stageconfig.pretrain import Config

torch.set_num_threads(1)


def _config(clip: float) -> Config:
    return Config.model_validate({"gradient_clipping": clip, "substages": [
        {"name": "a", "max_steps": 3, "global_batch": 2, "micro_batch": 1, "mix": [{"prefix": "x"}]}]})


@pytest.fixture
def rendezvous_env() -> Iterator[None]:
    """_dist_env(1) writes MASTER_PORT & co. into this process's environment: put it back after
    the test, so no later subprocess inherits a port this process's TCPStore still holds."""
    saved = {v: os.environ.get(v) for v in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    yield
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.mark.parametrize("clip", [0.0, 0.5])
@pytest.mark.usefixtures("rendezvous_env")
def test_deepspeed_zero2_with_accumulation_matches_plain_torch(clip: float) -> None:
    cfg = _config(clip)
    sub = cfg.substages[0]
    _dist_env(1)
    result = {}
    for ds in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
        engine = make_engine(model, list(model.parameters()), sub, cfg.model_copy(update={"deepspeed": ds}),
                             1, 2, False)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            engine.set_lr(1e-2)
            for _ in range(2):  # two micro batches per optimizer step
                engine.backward(engine.model(torch.randn(3, 8, generator=gen)).pow(2).sum() / 6)
            engine.step()
        result[ds] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.allclose(result[False], result[True], atol=1e-6)


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    sub = _config(1.0).substages[0].model_copy(update={"lr": 1.0, "warmup_ratio": 0.1, "min_lr_ratio": 0.1})
    assert lr_at(sub, 0.05) == pytest.approx(0.5)
    assert lr_at(sub, 0.1) == pytest.approx(1.0)
    assert lr_at(sub, 1.0) == pytest.approx(0.1)
    assert lr_at(sub, 0.55) == pytest.approx(0.55)
    both = sub.model_copy(update={"token_budget": 1000, "max_steps": 10})
    assert progress_of(both, 500, 8) == pytest.approx(0.8)
