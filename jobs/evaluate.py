"""The `evaluate` stage (`python -m jobs.evaluate`): a model's accuracy on question/answer shards."""

from __future__ import annotations

import io
import itertools
import math
import re
import tempfile
from typing import Any

import structlog

from jobs.core.runtime import StageRun, main
from jobs.core.shardio import ShardInput, ShardOutput, local_tmp_root
from jobs.core.shards import BadSample, Sample, read_shard
from jobs.vlm.engine import Engine, ModelSource, Sampling, open_engine
from jobs.vlm.modelref import resolve_model_ref
from sailk8s.errors import ConfigError, InputError, QualityError
from sailk8s.stageconfig.evaluate import Config
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .,:;!?\"'")


def prompt_of(question: str) -> str:
    """The user text without its image placeholder (the model API puts the image first)."""
    return question.replace("<image>", "").strip()


def names_only(prediction: str, answer: str, choices: list[str], aliases: dict[str, list[str]]) -> bool:
    """The prediction names `answer` (or an alias) as a whole word, and no other choice."""
    def named(choice: str) -> bool:
        words = [choice, *aliases.get(choice, [])]
        return any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", prediction, re.IGNORECASE) for w in words)

    return named(answer) and not any(named(c) for c in choices if c != answer)


def score_batch(engine: Engine, cfg: Config, batch: list[tuple[dict[str, Any], Any]]
                ) -> list[tuple[str, bool]]:
    """(prediction, correct) per sample of `question` (with `<image>`), `answer` and maybe `choices`.

    exact_match generates an answer (greedy, batched) and compares them normalised; multiple_choice
    picks the choice whose log-likelihood as the reply is highest; names_answer generates a free
    reply (a caption) that is correct when it names the answer and no other choice.
    """
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
            lp = engine.text_logprobs([img] * len(choices), [p] * len(choices), choices)
            preds.append(choices[max(range(len(choices)), key=lambda i: lp[i])])
    else:
        sampling = Sampling(max_new_tokens=cfg.max_new_tokens)
        preds = [g.text for g in engine.generate(images, prompts, sampling)]
    if cfg.metric == "names_answer":
        out = []
        for p, m in zip(preds, metas, strict=True):
            aliases = {str(k): [str(x) for x in v] for k, v in (m.get("choice_aliases") or {}).items()}
            choices = [str(c) for c in m.get("choices") or []]
            out.append((p, names_only(p, str(m["answer"]), choices, aliases)))
        return out
    norm = normalize if cfg.normalize else str.strip
    return [(p, norm(p) == norm(str(m["answer"]))) for p, m in zip(preds, metas, strict=True)]


def per_shard_cap(limit: int | None, shards: int) -> int | None:
    """How many samples each input shard contributes when `limit` caps the total (spread evenly)."""
    return None if limit is None else max(1, math.ceil(limit / max(shards, 1)))


def evaluate_shard(engine: Engine, cfg: Config, shard: ShardInput, out: ShardOutput,
                   cap: int | None) -> None:
    """Score one QA shard; each scored sample becomes a prediction record (json only, no image)."""
    pairs = itertools.islice(shard.decoded(), cap)  # cap None: every sample
    while batch := list(itertools.islice(pairs, cfg.batch_size)):
        scored = score_batch(engine, cfg, [(s.meta, img) for s, img in batch])
        for (sample, _), (pred, ok) in zip(batch, scored, strict=True):
            meta = {k: sample.meta[k] for k in ("question", "answer", "choices") if k in sample.meta}
            out.write(Sample(key=sample.key, meta={**meta, "prediction": pred, "correct": ok}))
            out.count("correct", int(ok))


def read_predictions(store: ObjectStore, keys: list[str]) -> list[dict[str, Any]]:
    """Every prediction record, in shard order then sample order."""
    records: list[dict[str, Any]] = []
    for key in keys:
        for item in read_shard(io.BytesIO(store.get(key)), need_image=False):
            if not isinstance(item, BadSample):
                records.append(item.meta)
    return records


def accuracy_report(records: list[dict[str, Any]], cfg: Config, dropped: dict[str, int]) -> dict[str, Any]:
    """The evaluate report's own fields, from the prediction records (at most cfg.limit of them)."""
    if cfg.limit is not None:
        records = records[:cfg.limit]
    if not records:
        raise InputError(f"no usable question/answer samples (dropped: {dropped})")
    per_answer: dict[str, list[int]] = {}
    for r in records:
        c = per_answer.setdefault(str(r["answer"]), [0, 0])
        c[0] += bool(r["correct"])
        c[1] += 1
    correct = sum(bool(r["correct"]) for r in records)
    accuracy = correct / len(records)
    return {"model": cfg.model, "metric": cfg.metric, "samples": len(records), "correct": correct,
            "accuracy": accuracy, "per_answer": {a: c[0] / c[1] for a, c in sorted(per_answer.items())},
            "examples": [{k: r[k] for k in ("question", "answer", "prediction")} for r in records[:10]],
            "summary": f"held-out accuracy {accuracy:.3f} ({correct}/{len(records)} correct)"}


def run() -> None:
    """Evaluate the configured model on every QA shard of the stage's inputs, shards split over ranks.

    Each scored shard becomes a shard of prediction records under outputs[0] (else
    runs/<run>/<stage>/predictions), so a resumed attempt scores only the shards left; rank 0 then
    reports the accuracy, and below `min_accuracy` fails the stage (QualityError) after the report.
    """
    stage = StageRun.from_env(Config)
    cfg = stage.typed(Config)
    if not stage.ctx.inputs:
        raise ConfigError(f"stage {stage.ctx.stage!r} has no inputs: list the QA shards' prefix")
    ref = resolve_model_ref(stage.store, cfg.model)
    # Predictions go to outputs[0] when the stage names one, else next to its report.
    prefix = stage.ctx.outputs[0].rstrip("/") if stage.ctx.outputs else stage.stage_key("predictions")
    units = stage.input_units(prefix)
    cap = per_shard_cap(cfg.limit, len(units))

    def finalize(report: dict[str, Any]) -> None:
        records = read_predictions(stage.store, [u.output_key for u in units])
        report.update(kind="evaluate", predictions=prefix,
                      **accuracy_report(records, cfg, report["dropped"]))

    # A fresh cache: a re-exported model under the same prefix must not be shadowed. The engine
    # loads on this rank's device (a GPU in a GPU pod), in bf16 there unless `dtype` says otherwise;
    # the cache lives as long as the engine (vLLM may read the folder after it starts).
    with tempfile.TemporaryDirectory(prefix="eval-model-", dir=local_tmp_root()) as cache:
        source = ModelSource(model=ref, dtype=cfg.dtype, max_tiles=cfg.max_tiles, cache_dir=cache)
        with open_engine(cfg.engine, source, max_new_tokens=cfg.max_new_tokens) as engine:

            def process(shard: ShardInput, out: ShardOutput) -> None:
                evaluate_shard(engine, cfg, shard, out, cap)

            report = stage.run_map(process, required=("question", "answer"), units=units, finalize=finalize)
    if report is not None:
        log.info("evaluation done", accuracy=round(report["accuracy"], 4), samples=report["samples"],
                 correct=report["correct"])
        print(f"held-out accuracy: {report['accuracy']:.3f} ({report['correct']}/{report['samples']})",
              flush=True)
        if cfg.min_accuracy is not None and report["accuracy"] < cfg.min_accuracy:
            raise QualityError(f"{cfg.model} scores {report['accuracy']:.3f} on {report['samples']} held-out "
                               f"samples ({cfg.metric}), below min_accuracy {cfg.min_accuracy}: the stages "
                               f"that use this model would run on a bad one; see the examples in "
                               f"{stage.paths.report}")


if __name__ == "__main__":
    main(run)
