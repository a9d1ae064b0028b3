"""The training loop shared by `jobs.pretrain` and `jobs.sft`: sub-stages, budgets, checkpoints."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import torch
import torch.distributed as tdist
import torch.nn.functional as F

from jobs.core.runtime import StageRun
from jobs.core.shardio import local_tmp_root
from jobs.core.shards import BadSampleError, Sample
from jobs.training.binstream import BinStream
from jobs.training.checkpoint import Checkpointer, TrainState
from jobs.training.encoding import TRUNCATED, Dropped, ImageRef, SampleEncoder
from jobs.training.engine import init_distributed, make_engine, shutdown_distributed
from jobs.training.mixstream import MixStream
from jobs.training.packing import IGNORE, Bin, StreamPacker, TokenizedSample, collate_packed, collate_padded
from jobs.training.scalars import PREFIX, ScalarLog
from jobs.training.tokenweights import LossWeights
from jobs.vlm.attention import use_packed_attention
from jobs.vlm.model import build_model, load_model, save_model
from jobs.vlm.modelref import resolve_model_ref
from sailk8s.errors import ConfigError
from sailk8s.ledger import CheckpointLedger, ProgressRecord, StageResults
from sailk8s.stageconfig.training import SubStage, TrainingConfig

log = structlog.get_logger(__name__)

PROGRESS_SECONDS = 2.0
PARTS = {"vision": "model.vision_tower", "projector": "model.multi_modal_projector",
         "llm": ("model.language_model", "lm_head")}


def apply_freeze(model: torch.nn.Module, train: Sequence[str]) -> list[torch.nn.Parameter]:
    """requires_grad only on the named parts; returns the trainable parameters."""
    prefixes: list[str] = []
    for part in train:
        p = PARTS[part]
        prefixes += list(p) if isinstance(p, tuple) else [p]
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(x + ".") for x in prefixes))
        if param.requires_grad:
            params.append(param)
    return params


def lr_at(sub: SubStage, progress: float) -> float:
    """Linear warmup over warmup_ratio of the budget, then cosine down to min_lr_ratio * lr."""
    p = min(max(progress, 0.0), 1.0)
    if sub.warmup_ratio > 0 and p < sub.warmup_ratio:
        return sub.lr * p / sub.warmup_ratio
    span = 1.0 - sub.warmup_ratio
    t = (p - sub.warmup_ratio) / span if span > 0 else 1.0
    floor = sub.lr * sub.min_lr_ratio
    return floor + (sub.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


def progress_of(sub: SubStage, tokens: int, step: int) -> float:
    """Fraction of the sub-stage done: the further of tokens/budget and steps/max_steps."""
    fr = [tokens / sub.token_budget] if sub.token_budget else []
    fr += [step / sub.max_steps] if sub.max_steps else []
    return max(fr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dist_env(world_size: int) -> None:
    """A single `python -m` process still needs a rendezvous for DeepSpeed: make one up."""
    if "MASTER_ADDR" not in os.environ and world_size == 1:
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                           "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})


class Trainer:
    """One training stage in this process.

    Every rank reads the same stream and plans and packs the same sequences (tokens and tile
    counts from image headers, no pixels), then trains on its share: the loss normaliser (target
    weight of the whole global batch) is known on every rank, and a rank decodes the images of
    its own sequences only.
    """

    def __init__(self, stage: StageRun, cfg: TrainingConfig, substages: Sequence[SubStage], *,
                 order_by: str | None = None, descending: bool = False) -> None:
        self.stage, self.cfg, self.substages = stage, cfg, list(substages)
        self.order_by, self.descending = order_by, descending
        self.rank, self.world = stage.dist.rank, stage.dist.world_size
        self.cuda = torch.cuda.is_available()
        self.bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.cuda)
        self.device = torch.device("cuda", stage.dist.local_rank) if self.cuda else torch.device("cpu")
        self.tmp = Path(tempfile.mkdtemp(prefix=f"train-{stage.ctx.stage}-", dir=local_tmp_root()))
        self.ckpt = Checkpointer(CheckpointLedger(stage.store, stage.ctx.run, stage.ctx.stage),
                                 rank=self.rank, world_size=self.world, keep_latest=cfg.keep_latest,
                                 tmp_root=self.tmp)
        self.results = StageResults(stage.store, stage.ctx.run, stage.ctx.stage)
        self.scalars = ScalarLog(stage, self.tmp / "tensorboard") if self.rank == 0 else None
        self.dropped: Counter[str] = Counter()  # found while planning: the same on every rank
        self.lost: Counter[str] = Counter()  # pixels that failed on this rank's own sequences
        self.started = time.monotonic()
        self._last_progress = float("-inf")
        self.log = log.bind(run=stage.ctx.run, stage=stage.ctx.stage, rank=self.rank)

    # -- model ------------------------------------------------------------------------------
    def build_model(self) -> tuple[torch.nn.Module, Any]:
        m = self.cfg.model
        if m.init_from:
            ref = resolve_model_ref(self.stage.store, m.init_from, field="config.model.init_from")
            # A fresh cache: a rerun of the exporting stage must not be shadowed by an old copy.
            model, processor = load_model(ref, device="cpu", cache_dir=self.tmp / "models")
        else:
            model, processor = build_model(m.preset, vision_from=m.vision_from, llm_from=m.llm_from,
                                               seed=self.cfg.seed, max_tiles=self.cfg.max_tiles)
        model.config.use_cache = False  # packed sequences must not share a KV cache
        if self.cfg.packing and not self.cuda:
            use_packed_attention(model)  # per-sample attention: no L x L work across samples
        return model, processor

    # -- data -------------------------------------------------------------------------------
    def bins(self, sub: SubStage, encoder: SampleEncoder, stream: MixStream) -> BinStream:
        """Planned training sequences of a sub-stage: packed (or one sample per row for the baseline)."""

        def plan(idx: int, sample: Sample) -> TokenizedSample | None:
            entry = sub.mix[idx]
            image = None
            if sample.image_ext and entry.format != "text":
                try:
                    image = ImageRef.of_bytes(sample.image_bytes)  # the header only: pixels later
                except BadSampleError as err:
                    self.dropped[err.reason] += 1
                    return None
            enc = encoder.plan(sample.meta, image, entry.format, text_fields=entry.text_fields,
                               prompt=entry.prompt, source=entry.prefix)
            if isinstance(enc, Dropped):
                self.dropped[enc.reason] += 1
                return None
            if enc.truncated:
                self.dropped[TRUNCATED] += 1
            return enc

        return BinStream(stream, plan, StreamPacker(self.cfg.seq_len) if self.cfg.packing else None)

    def loss_weights(self, sub: SubStage, encoder: SampleEncoder, vocab_size: int) -> LossWeights:
        """The sub-stage's token weights; idf counts over the first idf_samples planned samples."""
        if sub.token_weighting == "uniform":
            return LossWeights.uniform()
        stream = MixStream(self.stage.store, sub.mix, seed=self.cfg.seed + 1000 * self.substages.index(sub))
        bins = BinStream(stream, self.bins(sub, encoder, stream).plan, None)  # one sample per bin
        samples = (b.items[0] for b in itertools.islice(bins, sub.idf_samples))
        weights = LossWeights.idf(samples, vocab_size, sub.idf_strength)
        self.log.info("token weights: idf", substage=sub.name, samples=sub.idf_samples, **weights.describe())
        return weights

    def materialize(self, bins: Sequence[Bin], encoder: SampleEncoder,
                    weights: LossWeights | None = None) -> tuple[list[Bin], float]:
        """This rank's sequences with their pixels made; (sequences, target weight blanked).

        A sample whose image header read but whose pixels do not is blanked (no targets, black
        tiles), so the sequences keep their layout on every rank; the caller takes its weight
        out of the normaliser through one small all-reduce per step.
        """
        weights = weights or LossWeights.uniform()
        out: list[Bin] = []
        blanked = 0.0
        for b in bins:
            items = []
            for s in b.items:
                made = encoder.materialize(s)
                if isinstance(made, Dropped):
                    self.lost[made.reason] += 1
                    self.log.warning("sample blanked: its image does not decode", reason=made.reason,
                                     detail=made.detail[:200], source=s.source)
                    blanked += weights.of(s)
                    made = encoder.blank(s)
                items.append(made)
            out.append(Bin(items, b.used))
        return out, blanked

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Resume from the newest valid checkpoint (weights, optimizer, step, data position, RNG), train."""
        _dist_env(self.world)
        init_distributed(self.world, cuda=self.cuda)
        model, processor = self.build_model()
        restored = self.ckpt.restore(model)
        state, optim_state = restored if restored is not None else (TrainState(), None)
        if self.cuda:
            torch.cuda.set_device(self.device)  # object collectives on NCCL use the current device
        if restored is not None:
            self.log.info("resumed from checkpoint", global_step=state.global_step, substage=state.substage,
                          step=state.step, tokens=state.tokens)
        model.to(self.device)
        encoder = SampleEncoder(processor, seq_len=self.cfg.seq_len, max_tiles=self.cfg.max_tiles,
                                on_too_long=self.cfg.on_too_long)
        while not state.finished and state.substage < len(self.substages):
            model = self.run_substage(model, encoder, state, optim_state)
            optim_state = None
        report = self.finish(model, processor, state)
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutdown_distributed()
        return report

    def run_substage(self, model: torch.nn.Module, encoder: SampleEncoder, state: TrainState,
                     optim_state: dict[str, Any] | None) -> torch.nn.Module:
        """Train one sub-stage to its budget, from the previous one's weights, checkpointing as it goes.

        A global batch of `global_batch` sequences per optimizer step, split over ranks and micro
        batches; AdamW with warmup + cosine on the fraction of the budget done. The data position
        is a cursor saved with each checkpoint: a resume reads a few shards, not the stream.
        """
        sub = self.substages[state.substage]
        per_rank, rest = divmod(sub.global_batch, self.world)
        if rest or per_rank % sub.micro_batch:
            raise ConfigError(f"sub-stage {sub.name!r}: global_batch {sub.global_batch} must be a multiple"
                              f" of micro_batch {sub.micro_batch} x world size {self.world}")
        accumulation = per_rank // sub.micro_batch
        params = apply_freeze(model, sub.train)
        engine = make_engine(model, params, sub, self.cfg, self.world, accumulation, self.bf16)
        if optim_state and not engine.load_optimizer_state(optim_state):
            self.log.warning("optimizer state does not fit (world size or parameters changed): "
                             "weights resumed, optimizer restarted", substage=sub.name)
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        weights = self.loss_weights(sub, encoder, vocab_size)
        stream = MixStream(self.stage.store, sub.mix, seed=self.cfg.seed + 1000 * state.substage,
                           order_by=self.order_by, descending=self.descending)
        self.dropped, self.lost = Counter(), Counter()
        bins = self.bins(sub, encoder, stream)
        if state.cursor is not None:  # resume the data position: a few shards read, no replay
            bins.restore(state.cursor)
            self.log.info("data position restored", bins=state.bins, shards_read=bins.shards_read_on_restore)
        else:
            for _ in range(state.bins):  # a checkpoint without a cursor: replay (planning only, no pixels)
                next(bins)
        self.dropped = Counter()  # samples before the position were counted by the earlier attempt
        self.log.info("sub-stage starts", substage=sub.name, train=sub.train, budget=sub.token_budget,
                      max_steps=sub.max_steps, accumulation=accumulation, resumed_step=state.step)
        t0, tok0 = time.monotonic(), state.tokens
        loss = float("nan")
        while progress_of(sub, state.tokens, state.step) < 1.0:
            step_bins = [next(bins) for _ in range(sub.global_batch)]
            state.bins += len(step_bins)
            real = sum(b.used for b in step_bins)
            # The loss normaliser: the target weight of the whole global batch (every rank plans it).
            norm = sum(weights.of(s) for b in step_bins for s in b.items)
            lr = lr_at(sub, progress_of(sub, state.tokens + real, state.step + 1))
            engine.set_lr(lr)
            own = step_bins[self.rank * per_rank:(self.rank + 1) * per_rank]
            mine, blanked = self.materialize(own, encoder, weights)  # the only pixel work: own sequences
            if self.world > 1:
                lost = torch.tensor(blanked, dtype=torch.float64, device=self.device)
                tdist.all_reduce(lost)
                blanked = float(lost)
            norm -= blanked
            # Reported loss: the plain mean cross-entropy per target token, whatever the weighting.
            sums = torch.zeros(2, dtype=torch.float64)  # cross-entropy, target tokens
            for i in range(0, len(mine), sub.micro_batch):
                micro = mine[i:i + sub.micro_batch]
                weighted, plain, targets = self.micro_loss(engine.model, micro, encoder, weights)
                engine.backward(weighted / max(norm, 1e-9))
                sums += torch.tensor([plain, targets], dtype=torch.float64)
            engine.step()
            if self.world > 1:
                sums = sums.to(self.device)  # NCCL reduces device tensors only
                tdist.all_reduce(sums)
            loss = float(sums[0]) / max(float(sums[1]), 1.0)
            state.step += 1
            state.global_step += 1
            state.tokens += real
            state.losses.append([state.global_step, loss])
            rate = (state.tokens - tok0) / max(time.monotonic() - t0, 1e-9)
            if self.scalars is not None:
                # fill: the share of the step's sequence positions that hold real tokens (packing).
                self.scalars.add(state.global_step, {
                    "loss": loss, "lr": lr, "grad_norm": engine.grad_norm, "tokens_per_s": rate,
                    "fill": real / max(len(step_bins) * self.cfg.seq_len, 1)})
            if state.step % self.cfg.log_every == 0:
                self.log.info("step", substage=sub.name, step=state.step, loss=round(loss, 4),
                              tokens=state.tokens, tokens_per_s=round(rate, 1))
            self.write_progress(sub, state, loss, rate, force=progress_of(sub, state.tokens, state.step) >= 1)
            if state.step % self.cfg.checkpoint_every == 0 and progress_of(sub, state.tokens, state.step) < 1:
                state.cursor = bins.state()
                self.ckpt.save(model, engine.optimizer_state(), state)
                if self.scalars is not None:
                    self.scalars.upload()  # what a checkpoint keeps, TensorBoard shows
        dropped = self.dropped + self.all_ranks(self.lost)
        state.summaries.append({
            "substage": sub.name, "steps": state.step, "tokens": state.tokens, "budget": sub.token_budget,
            "final_loss": loss, "train": list(sub.train), "epochs": stream.epochs,
            "dropped": dict(dropped), "tokens_per_s": round((state.tokens - tok0) /
                                                                 max(time.monotonic() - t0, 1e-9), 1)})
        self.log.info("sub-stage done", substage=sub.name, steps=state.step, tokens=state.tokens,
                      final_loss=loss, epochs=stream.epochs, dropped=dict(dropped))
        state.substage += 1
        state.step = state.tokens = state.bins = 0
        state.cursor = None
        state.finished = state.substage >= len(self.substages)
        self.ckpt.save(model, {}, state)  # the sub-stage's final weights; the next starts a new optimizer
        return model

    def all_ranks(self, counts: Counter[str]) -> Counter[str]:
        """The sum of a per-rank counter over all ranks."""
        if self.world == 1:
            return Counter(counts)
        gathered: list[Counter[str] | None] = [None] * self.world
        tdist.all_gather_object(gathered, counts)
        return sum((c for c in gathered if c is not None), Counter())

    def micro_loss(self, model: torch.nn.Module, micro: list[Bin], encoder: SampleEncoder,
                   weights: LossWeights) -> tuple[torch.Tensor, float, int]:
        """One micro batch (packed or padded): (weighted summed cross-entropy, plain sum, targets)."""
        if self.cfg.packing:
            batch = collate_packed(micro, self.cfg.seq_len, encoder.pad_id)
        else:
            batch = collate_padded([b.items[0] for b in micro], encoder.pad_id)
        inputs: dict[str, Any] = {k: v.to(self.device) for k, v in batch.items()
                                  if k in ("input_ids", "position_ids", "attention_mask")}
        if "pixel_values" in batch:
            inputs["pixel_values"] = batch["pixel_values"].to(
                self.device, dtype=torch.bfloat16 if self.bf16 else torch.float32)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = model(**inputs, use_cache=False).logits
        labels = batch["labels"].to(self.device)[:, 1:]
        ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=IGNORE, reduction="none").view(labels.shape)
        plain = ce.sum()
        weighted = plain if weights.is_uniform else (ce * weights.tensor(labels)).sum()
        return weighted, float(plain.detach()), int((labels != IGNORE).sum())

    # -- reporting --------------------------------------------------------------------------
    def write_progress(self, sub: SubStage, state: TrainState, loss: float, rate: float,
                       force: bool = False) -> None:
        """progress.json (rank 0), at most every PROGRESS_SECONDS: two small PUTs, not per step."""
        now = time.monotonic()
        if self.rank != 0 or (not force and now - self._last_progress < PROGRESS_SECONDS):
            return
        self._last_progress = now
        # done/total in tokens when the sub-stage has a token budget, else in optimizer steps.
        if sub.token_budget:
            unit, done, total, unit_rate = "tokens", float(state.tokens), float(sub.token_budget), rate
            eta = (total - done) / rate if rate > 0 else None
        else:
            unit, done, total = "steps", float(state.step), float(sub.max_steps or 0)
            per_step = (time.monotonic() - self.started) / max(state.global_step, 1)
            eta, unit_rate = (total - done) * per_step, 1.0 / per_step
        rec = ProgressRecord(done=done, total=total, unit=unit, rate=unit_rate, eta_seconds=eta,
                             updated_at=time.time(), world_size=self.world, attempt=self.stage.ctx.attempt,
                             substage=sub.name, substage_index=state.substage, substages=len(self.substages),
                             step=state.step, global_step=state.global_step, max_steps=sub.max_steps,
                             tokens=state.tokens, token_budget=sub.token_budget, loss=loss, tokens_per_s=rate)
        self.results.write_progress(0, rec)  # advisory: a store failure is logged, not raised

    def finish(self, model: torch.nn.Module, processor: Any, state: TrainState) -> dict[str, Any]:
        """Rank 0: export the model (transformers format) to `export_to` / outputs[0], loss curve, report."""
        report: dict[str, Any] = {"kind": self.stage.ctx.kind, "substages": state.summaries,
                                  "global_steps": state.global_step,
                                  "final_loss": state.losses[-1][1] if state.losses else None,
                                  "losses": state.losses}
        if self.rank == 0:
            export = self.cfg.export_to or self.stage.output_prefix()
            out = self.tmp / "export"
            save_model(model.to("cpu").float(), processor, out)
            files = sorted(p for p in out.rglob("*") if p.is_file())
            # config.json last: a reader that finds it finds a complete model.
            for p in sorted(files, key=lambda p: p.name == "config.json"):
                self.stage.store.put_file(f"{export}/{p.relative_to(out).as_posix()}", p)
            report["exported_to"] = export
            names = ", ".join(x["substage"] for x in state.summaries)
            loss = report["final_loss"]
            report["summary"] = (f"{names}: {state.global_step} steps, final loss "
                                 f"{loss if loss is None else round(loss, 4)}; model exported to {export}")
            self.loss_curve(state)
            if self.scalars is not None:
                self.scalars.close()
                report["tensorboard"] = self.stage.paths.artifact(PREFIX)  # store-relative, as exported_to
            self.results.write_report(self.stage.ctx.attempt, report)
            self.log.info("training done", exported_to=export, final_loss=report["final_loss"])
        return report

    def loss_curve(self, state: TrainState) -> None:
        """artifacts/loss.png: loss per step, sub-stage boundaries marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not state.losses:
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        xs, ys = zip(*state.losses, strict=True)
        ax.plot(xs, ys, lw=1.2)
        edge = 0
        for s in state.summaries:
            edge += s["steps"]
            ax.axvline(edge, color="grey", ls=":", lw=0.8)
            ax.text(edge, max(ys), s["substage"], rotation=90, va="top", ha="right", fontsize=8)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (per target token)")
        ax.set_title(f"{self.stage.ctx.run} / {self.stage.ctx.stage}")
        path = self.tmp / "loss.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        self.stage.store.put_file(self.stage.paths.artifact("loss.png"), path)


def run_training(stage: StageRun, cfg: TrainingConfig, substages: Sequence[SubStage], *,
                 order_by: str | None = None, descending: bool = False) -> dict[str, Any]:
    """Train every sub-stage in order (resuming from the newest checkpoint) and export the model."""
    return Trainer(stage, cfg, substages, order_by=order_by, descending=descending).run()
