"""The inference-engine choice shared by the stages that run a VLM (caption, judge filter, evaluate)."""

from __future__ import annotations

from typing import Literal

# hf: transformers generate(); vllm: vLLM (in the caption image; batched serving, several times
# faster on a GPU); auto: vllm where it is installed and a GPU is visible, else hf.
EngineName = Literal["hf", "vllm", "auto"]
