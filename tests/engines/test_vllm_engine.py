"""The vLLM engine against the hf engine: token-identical greedy captions, the same log-likelihoods."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from jobs.vlm.engine import Sampling  # noqa: E402


def test_greedy_captions_are_token_identical(engines) -> None:
    """fp32, greedy, one shard's worth of real images of 1-4 tiles: >= 95% identical.

    Both engines get our chat template, our PIL image processor with the same tiling and decode
    with our tokenizer; what remains is the numerics of two attention implementations (sdpa
    with left padding vs vLLM's paged CPU attention), which can flip a near-tie.
    """
    from vllmkit import mixed_images

    hf, vllm = engines
    images = mixed_images(64)
    prompts = [("Describe this image in detail." if i % 2 else f"Here is the alt-text: digit {i % 10}. "
                "Write a detailed description.") for i in range(64)]
    sampling = Sampling(max_new_tokens=24)
    ours = []
    for start in range(0, 64, 16):  # the caption stage's batches
        ours += hf.generate(images[start:start + 16], prompts[start:start + 16], sampling)
    theirs = vllm.generate(images, prompts, sampling)
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"token-identical greedy captions: {same}/64")
    assert same >= 0.95 * 64
    assert len({g.text for g in theirs}) > 8  # the captions really depend on the image


def test_prompt_log_likelihoods_match(engines) -> None:
    from vllmkit import mixed_images

    hf, vllm = engines
    images = mixed_images(6)
    prompts = ["Which digit is this?"] * 6
    texts = ["seven", "The image shows a digit", "3", "a cat on a mat", "no", "Richness: 4. Alignment: 5."]
    for imgs in (images, None):
        a = hf.text_logprobs(imgs, prompts, texts)
        b = vllm.text_logprobs(imgs, prompts, texts)
        assert b == pytest.approx(a, abs=1e-3)


def test_seeded_sampling_repeats(engines) -> None:
    from vllmkit import mixed_images

    _, vllm = engines
    images = mixed_images(4)
    prompts = ["Describe this image in detail."] * 4
    sampling = Sampling(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=0.9)
    first = vllm.generate(images, prompts, sampling, seeds=[1, 2, 3, 4])
    again = vllm.generate(images, prompts, sampling, seeds=[1, 2, 3, 4])
    assert first == again


def test_exports_name_the_pil_image_processor_even_with_torchvision(export) -> None:
    """The export loads offline with the stock InternVL processor too, and both pick PIL pixels."""
    import torchvision  # noqa: F401  (present in this venv: the fast processor would be chosen)
    from transformers import AutoImageProcessor, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    import jobs.vlm.model  # noqa: F401  (registers the PIL processor for both backends)

    assert isinstance(AutoImageProcessor.from_pretrained(export), GotOcr2ImageProcessorPil)
    stock = InternVLProcessor.from_pretrained(export)
    assert isinstance(stock.image_processor, GotOcr2ImageProcessorPil)
    assert stock.video_processor is not None
    assert (export / "video_preprocessor_config.json").exists()


def test_a_preset_serves_the_same_weights_in_both_engines() -> None:
    """A preset (random init, seeded) is built and saved for vLLM: the same model as hf builds."""
    from vllmkit import mixed_images

    from jobs.vlm.engine import ModelSource, open_engine

    source = ModelSource(preset="tiny-vllm", seed=3, dtype="float32", max_tiles=2)
    images, prompts = mixed_images(4), ["Describe this image in detail."] * 4
    with open_engine("hf", source) as hf:
        want = hf.text_logprobs(images, prompts, ["a digit"] * 4)
    with open_engine("vllm", source, max_new_tokens=8) as vllm:
        got = vllm.text_logprobs(images, prompts, ["a digit"] * 4)
        preset_dir = vllm._cleanup
    assert got == pytest.approx(want, abs=1e-3)
    assert preset_dir is not None and not preset_dir.exists()  # the saved preset is removed on close
