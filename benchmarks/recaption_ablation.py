"""SAIL-VL's claim at toy scale: pretraining on recaptions beats pretraining on raw alt-texts.

One pipeline through the real controller (local backend): the quickstart's data stages
(ingest, captioner, its held-out check, judge, recaption, filter), then three pretraining
stages that differ only in their data, with the same model, seed, token budget and schedule:

    (a) raw        data/samples/raw, the web alt-texts
    (b) recaption  data/recaptioned, the captioner's recaptions
    (c) filtered   data/filtered, the recaptions that passed the filter chain (judge included)

Each pretrained model is probed without any digit SFT, as a zero-shot classifier of the
held-out eval digits: for k = 0..9 it scores how much the image raises the likelihood of
digit-naming texts ("a handwritten digit k", ...; several phrasings, so neither data's own
wording is favoured), and predicts the k with the largest gain.

    python benchmarks/recaption_ablation.py [--quick] [--keep DIR]

Prints a table; the last line is JSON with `ours` = (c), `baseline` = (a), `recaption` = (b)
(accuracies in 0..1) and `ratio` = ours / baseline.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.core import shards as sh  # noqa: E402
from jobs.core.samples import NUMBER_WORDS  # noqa: E402
from jobs.training.encoding import SampleEncoder  # noqa: E402
from jobs.training.packing import IGNORE, collate_padded  # noqa: E402
from jobs.vlm import model as vlm  # noqa: E402

RUN = "ablation"
DATA_STAGES = ("ingest", "captioner", "captioner-check", "judge", "recaption", "filter")
ARMS = {"raw": ("data/samples/raw", ["alt_text"]), "recaption": ("data/recaptioned", ["recaption"]),
        "filtered": ("data/filtered", ["recaption"])}
TEMPLATES = ("a handwritten digit {k}", "handwritten digit {k}", "A handwritten digit {k} ({w})",
             "number {k}")


def pipeline(quick: bool, token_budget: int) -> dict[str, Any]:
    """The quickstart's data stages, then one pretraining stage per arm (identical but for data)."""
    base = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    stages = {s["name"]: s for s in base["stages"]}
    data = [stages[name] for name in DATA_STAGES]
    if quick:  # a smoke run: small sets, short training, the quality bars off (they would fire)
        stages["ingest"]["config"]["samples"] = {
            "raw_digits": 120, "reference_digits": 120, "eval_digits": 60, "reference_photos": 2,
            "sft_knowledge_digits": 0, "sft_instruction_digits": 0}
        for name in ("captioner", "judge"):
            stages[name]["config"]["stages"][0]["max_steps"] = 60
        stages["captioner-check"]["config"].pop("min_accuracy")
        stages["recaption"]["config"]["quality_gate"] = {"enabled": False}
        for f in stages["filter"]["config"]["filters"]:  # untrained models: measure, drop nothing
            if f["type"] == "judge":
                f["min_score"] = 1
            elif f["type"] == "alignment":
                f["min_score"] = None
    arms: list[dict[str, Any]] = []
    for arm, (prefix, fields) in ARMS.items():
        # One after another: arms running side by side on two cores would slow each other unevenly.
        after = arms[-1]["name"] if arms else "filter"
        arms.append({
            "name": f"pretrain-{arm}", "kind": "pretrain", "depends": [after], "inputs": [prefix],
            "outputs": [f"models/ablation-{arm}"],
            "resources": {"procs_per_node": 1, "cpu": "2", "memory": "4Gi"},
            "config": {"model": {"preset": "tiny"}, "seq_len": 256, "deepspeed": False, "seed": 0,
                       "checkpoint_every": 10_000,
                       "substages": [{"name": "all", "train": ["projector", "vision", "llm"],
                                      "token_budget": token_budget, "lr": 3.0e-3, "weight_decay": 0.01,
                                      "global_batch": 4, "micro_batch": 4, "token_weighting": "idf",
                                      "mix": [{"prefix": prefix, "format": "caption",
                                               "text_fields": fields}]}]},
        })
    return {"run": RUN, "backend": "local", "store": "file://./store", "stages": data + arms}


def run_pipeline(workdir: Path, spec: dict[str, Any]) -> float:
    """Run it with the real CLI and controller; seconds taken."""
    path = workdir / "ablation.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "SAIL_LOCAL_DIR": str(workdir / "local"), "SAIL_LOG_FORMAT": "json"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sailk8s", "run", "-f", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the ablation pipeline failed (exit {proc.returncode})")
    return time.perf_counter() - t0


def eval_digits(store: Path, limit: int | None) -> list[tuple[Any, int]]:
    """(image, label) of the held-out eval digits."""
    out = []
    for shard in sorted((store / "data" / "samples" / "eval").glob("*.tar")):
        for s in sh.read_shard(io.BytesIO(shard.read_bytes())):
            if isinstance(s, sh.Sample):
                out.append((s.decode(), int(s.meta["label"])))
    return out[:limit]


@torch.inference_mode()
def logprobs(model: Any, enc: SampleEncoder, image: Any, texts: list[str]) -> list[float]:
    """log p(text | image) per text in the pretraining's caption format (image tokens, then text)."""
    samples = [enc.caption(image, t) for t in texts]
    batch = collate_padded(samples, enc.pad_id)  # type: ignore[arg-type]
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "pixel_values" in batch:
        kwargs["pixel_values"] = batch["pixel_values"]
    logits = model(**kwargs, use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = batch["labels"][:, 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(target == IGNORE, 0.0)
    return [float(x) for x in picked.sum(dim=1)]


def probe(model_dir: Path, digits: list[tuple[Any, int]]) -> float:
    """Zero-shot accuracy: argmax over k of the image's log-likelihood gain on digit-naming texts."""
    model, processor = vlm.load_model(str(model_dir))
    enc = SampleEncoder(processor, seq_len=256)
    texts = [t.format(k=k, w=NUMBER_WORDS[k]) for k in range(10) for t in TEMPLATES]
    prior = logprobs(model, enc, None, texts)  # no image: how likely each text is anyway
    correct = 0
    for image, label in digits:
        gain = [a - b for a, b in zip(logprobs(model, enc, image, texts), prior, strict=True)]
        per_k = [math.log(sum(math.exp(g) for g in gain[k * len(TEMPLATES):(k + 1) * len(TEMPLATES)]))
                 for k in range(10)]
        correct += max(range(10), key=lambda k: per_k[k]) == label
    return correct / len(digits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sets and short training (a smoke run)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    ap.add_argument("--token-budget", type=int, default=None, help="real tokens per pretraining arm")
    args = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    budget = args.token_budget or (20_000 if args.quick else 1_000_000)
    work = args.keep or Path(tempfile.mkdtemp(prefix="recaption-ablation-"))
    work.mkdir(parents=True, exist_ok=True)
    seconds = run_pipeline(work, pipeline(args.quick, budget))
    store = work / "store"
    digits = eval_digits(store, 60 if args.quick else None)
    acc = {arm: probe(store / "models" / f"ablation-{arm}", digits) for arm in ARMS}
    kept = json.loads((store / "runs" / RUN / "filter" / "report.json").read_text())
    print(f"pipeline {seconds:.0f} s; {len(digits)} held-out digits; token budget {budget} per arm; "
          f"filter kept {kept['kept']}/{kept['samples_in']}")
    print(f"{'arm':<12}{'data':<22}{'zero-shot digit accuracy':>26}")
    for arm, (prefix, fields) in ARMS.items():
        print(f"{arm:<12}{prefix + ' ' + fields[0]:<22}{acc[arm]:>26.3f}")
    print(json.dumps({"benchmark": "recaption_ablation", "unit": "zero-shot accuracy",
                      "ours": acc["filtered"], "baseline": acc["raw"], "recaption": acc["recaption"],
                      "ratio": round(acc["filtered"] / max(acc["raw"], 1e-9), 4),
                      "digits": len(digits), "token_budget": budget, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
