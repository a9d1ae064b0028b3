"""`python -m jobs.evaluate`: question/answer shards -> exact-match or multiple-choice accuracy.

Each sample's json has `question` (with an `<image>` placeholder when it shows the image),
`answer`, and optionally `choices`. exact_match generates an answer (greedy, batched) and
compares after normalising case, spaces and trailing punctuation; multiple_choice scores each
choice's log-likelihood as the reply (jobs.model.text_logprobs) and picks the best. The
report (report.json) has the accuracy overall and per answer, counts, and a few examples.
"""

from __future__ import annotations

import io
import re
import tempfile
import time
from collections import Counter
from typing import Any

import structlog

from jobs import model as vlm
from jobs import shards as sh
from jobs.mixstream import list_shards
from jobs.modelref import resolve_model_ref
from jobs.runtime import InputError, StageRun, local_tmp_root, main
from sailk8s.errors import ConfigError
from sailk8s.ledger import write_report
from sailk8s.stageconfig.evaluate import Config

log = structlog.get_logger(__name__)


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .,:;!?\"'")


def prompt_of(question: str) -> str:
    """The user text without its image placeholder (the model API puts the image first)."""
    return question.replace("<image>", "").strip()


def score_batch(model: Any, processor: Any, cfg: Config, batch: list[tuple[dict[str, Any], Any]]
                ) -> list[tuple[str, bool]]:
    """(prediction, correct) per sample."""
    metas = [m for m, _ in batch]
    images = [img for _, img in batch]
    prompts = [prompt_of(str(m["question"])) for m in metas]
    use_mc = cfg.metric == "multiple_choice" or (
        cfg.metric == "auto" and all(m.get("choices") for m in metas))
    preds: list[str] = []
    if use_mc:
        for m, img, p in zip(metas, images, prompts, strict=True):
            choices = [str(c) for c in m.get("choices") or []]
            if not choices:
                raise InputError(f"sample needs `choices` for multiple_choice: {str(m)[:80]}")
            lp = vlm.text_logprobs(model, processor, [img] * len(choices), [p] * len(choices), choices)
            preds.append(choices[max(range(len(choices)), key=lambda i: lp[i])])
    else:
        preds = vlm.generate_texts(model, processor, images, prompts, max_new_tokens=cfg.max_new_tokens,
                                   max_tiles=cfg.max_tiles)
    norm = normalize if cfg.normalize else str.strip
    return [(p, norm(p) == norm(str(m["answer"]))) for p, m in zip(preds, metas, strict=True)]


def run() -> None:
    """Evaluate the configured model on every QA shard of the stage's inputs."""
    stage = StageRun.from_env(Config)
    cfg = stage.typed(Config)
    if not stage.ctx.inputs:
        raise ConfigError(f"stage {stage.ctx.stage!r} has no inputs: list the QA shards' prefix")
    ref = resolve_model_ref(stage.store, cfg.model)
    with tempfile.TemporaryDirectory(prefix="eval-model-", dir=local_tmp_root()) as cache:
        # A fresh cache: a re-exported model under the same prefix must not be shadowed.
        model, processor = vlm.load_model(ref, cache_dir=cache)
    t0 = time.monotonic()
    dropped: Counter[str] = Counter()
    per_answer: dict[str, list[int]] = {}
    correct = total = 0
    examples: list[dict[str, Any]] = []
    batch: list[tuple[dict[str, Any], Any]] = []

    def flush() -> None:
        nonlocal correct, total
        for (meta, _), (pred, ok) in zip(batch, score_batch(model, processor, cfg, batch), strict=True):
            total += 1
            correct += ok
            c = per_answer.setdefault(str(meta["answer"]), [0, 0])
            c[0] += ok
            c[1] += 1
            if len(examples) < 10:
                examples.append({"question": meta["question"], "answer": meta["answer"], "prediction": pred})
        batch.clear()

    keys = [k for p in stage.ctx.inputs for k in list_shards(stage.store, p)]
    for key in keys if stage.dist.is_main else []:
        for item in sh.read_shard(io.BytesIO(stage.store.get(key)), required=("question", "answer")):
            if isinstance(item, sh.BadSample):
                dropped[item.reason] += 1
                continue
            try:
                image = item.decode()
            except sh.BadSampleError as err:
                dropped[err.reason] += 1
                continue
            batch.append((item.meta, image))
            if len(batch) >= cfg.batch_size:
                flush()
            if cfg.limit and total + len(batch) >= cfg.limit:
                break
        if cfg.limit and total + len(batch) >= cfg.limit:
            break
    if batch:
        flush()
    if not stage.dist.is_main:
        return
    if total == 0:
        raise InputError(f"no usable question/answer samples in {len(keys)} shard(s) "
                         f"(dropped: {dict(dropped)})")
    accuracy = correct / total
    report = {"kind": "evaluate", "model": cfg.model, "metric": cfg.metric, "samples": total,
              "correct": correct, "accuracy": accuracy, "dropped": dict(dropped),
              "per_answer": {a: c[0] / c[1] for a, c in sorted(per_answer.items())},
              "examples": examples, "seconds": round(time.monotonic() - t0, 2),
              "summary": f"held-out accuracy {accuracy:.3f} ({correct}/{total} correct)"}
    write_report(stage.store, stage.ctx.run, stage.ctx.stage, stage.ctx.attempt, report)
    log.info("evaluation done", accuracy=round(accuracy, 4), samples=total, correct=correct)
    print(f"held-out accuracy: {accuracy:.3f} ({correct}/{total})", flush=True)


if __name__ == "__main__":
    main(run)
