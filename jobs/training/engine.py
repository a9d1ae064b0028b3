"""The optimizer step behind one interface: DeepSpeed (ZeRO 0-3) or plain torch (DDP-style reduce)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as tdist

from sailk8s.stageconfig.training import SubStage, TrainingConfig


def _quiet_deepspeed() -> Any:
    os.environ.setdefault("DS_BUILD_OPS", "0")
    import deepspeed
    import deepspeed.comm.torch as ds_torch_comm
    import deepspeed.ops

    # Why: the op compiles a C++ extension on first use (~35 s) and only speeds up CPU allreduce.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ds_torch_comm.build_shm_op = lambda: None
    return deepspeed


def init_distributed(world_size: int, *, cuda: bool) -> None:
    """Start the process group once (gloo on CPU, NCCL on GPU) when there is more than one rank."""
    if world_size > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if cuda else "gloo")


def shutdown_distributed() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits.

    A rank that exits while rank 0 still exports, with the group alive, can abort in gloo's
    destructor ("terminate called without an active exception", exit -6): a clean run then
    looks like a failed one.
    """
    if tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


class TorchEngine:
    """Plain torch: AdamW, gradients summed over ranks by all-reduce, norm clipping."""

    def __init__(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter], sub: SubStage,
                 cfg: TrainingConfig, world_size: int) -> None:
        self.model = model
        self.params = list(params)
        self.world_size = world_size
        self.clip = cfg.gradient_clipping
        self.optimizer = torch.optim.AdamW(self.params, lr=sub.lr, betas=sub.betas,
                                           weight_decay=sub.weight_decay)
        self.grad_norm: float | None = None  # of the last step, before clipping (for TensorBoard)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.world_size > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                tdist.all_reduce(p.grad)  # sum: each rank holds its share of the normalised loss
        if self.clip > 0:
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip))
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            self.grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def optimizer_state(self) -> dict[str, Any]:
        return {"torch": self.optimizer.state_dict()}

    def load_optimizer_state(self, state: dict[str, Any]) -> bool:
        if "torch" not in state:
            return False
        self.optimizer.load_state_dict(state["torch"])
        return True


class DeepSpeedEngine:
    """DeepSpeed's engine with ZeRO; optimizer state saved per rank as plain tensors.

    It is given a torch AdamW (no ~45 s compile of DeepSpeed's own Adam); gloo does the
    collectives on CPU, NCCL on GPU.
    """

    def __init__(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter], sub: SubStage,
                 cfg: TrainingConfig, world_size: int, accumulation: int, bf16: bool) -> None:
        deepspeed = _quiet_deepspeed()
        optimizer = torch.optim.AdamW(list(params), lr=sub.lr, betas=sub.betas, weight_decay=sub.weight_decay)
        ds_config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": sub.micro_batch,
            "gradient_accumulation_steps": accumulation,
            "train_batch_size": sub.micro_batch * accumulation * world_size,
            "zero_optimization": {"stage": cfg.zero_stage},
            "gradient_clipping": cfg.gradient_clipping,
            "bf16": {"enabled": bf16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
            "zero_allow_untested_optimizer": True,
        }
        self.scale = float(accumulation * world_size)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config, dist_init_required=True)
        self.model = self.engine  # forward through the engine (ZeRO-3 gathers params there)

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed divides by the accumulation steps and averages over ranks: undo both.
        self.engine.backward(loss * self.scale)
        # DeepSpeed counts micro steps in step() and only updates at the accumulation boundary,
        # so it must be called after every micro batch.
        self.engine.step()

    def step(self) -> None:
        gas = self.engine.gradient_accumulation_steps()
        if not self.engine.global_steps or self.engine.micro_steps % gas:
            raise RuntimeError("DeepSpeed did not reach its accumulation boundary: micro batches per step "
                               "do not match gradient_accumulation_steps")

    @property
    def grad_norm(self) -> float | None:
        """The last step's global gradient norm as DeepSpeed measured it (None before one)."""
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def _base(self) -> torch.optim.Optimizer:
        opt = self.optimizer
        base: torch.optim.Optimizer = getattr(opt, "optimizer", opt)
        return base

    def set_lr(self, lr: float) -> None:
        for g in self._base().param_groups:
            g["lr"] = lr

    def optimizer_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"base": self._base().state_dict()}
        fp32 = getattr(self.optimizer, "single_partition_of_fp32_groups", None)
        if fp32 is not None:  # ZeRO 1/2: this rank's fp32 master partition
            state["fp32"] = [t.detach().clone() for t in fp32]
        return state

    def load_optimizer_state(self, state: dict[str, Any]) -> bool:
        fp32 = getattr(self.optimizer, "single_partition_of_fp32_groups", None)
        if "base" not in state or (fp32 is not None) != ("fp32" in state):
            return False
        if fp32 is not None:
            if [t.shape for t in fp32] != [t.shape for t in state["fp32"]]:
                return False  # another world size or parameter set: partitions differ
            for dst, src in zip(fp32, state["fp32"], strict=True):
                dst.data.copy_(src)
        self._base().load_state_dict(state["base"])
        return True


Engine = TorchEngine | DeepSpeedEngine


def make_engine(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], sub: SubStage,
                cfg: TrainingConfig, world_size: int, accumulation: int, bf16: bool) -> Engine:
    """DeepSpeed when configured, else the plain torch engine.

    Either way `backward` takes (sum of token losses) / (target tokens of the WHOLE global batch),
    so an update equals the one for the unpacked, unsplit batch whatever the packing, micro batch
    size or world size; `step` ends a global batch (reduce, clip, update).
    """
    if cfg.deepspeed:
        return DeepSpeedEngine(model, params, sub, cfg, world_size, accumulation, bf16)
    return TorchEngine(model, params, sub, cfg, world_size)
