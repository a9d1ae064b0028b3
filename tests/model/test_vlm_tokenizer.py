"""The offline tokenizer: deterministic, InternVL's image tokens, chat template."""

from __future__ import annotations

from jobs.vlm.tokenizer import IMAGE_TOKENS, build_tokenizer


def test_same_vocabulary_every_time() -> None:
    a, b = build_tokenizer(), build_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert 300 < len(a) <= 1024


def test_image_tokens_are_single_special_tokens() -> None:
    tok = build_tokenizer()
    for attr, text in IMAGE_TOKENS.items():
        assert getattr(tok, attr) == text
        assert tok.convert_tokens_to_ids(text) == getattr(tok, attr + "_id")
        ids = tok(f"a {text} b", add_special_tokens=False)["input_ids"]
        assert ids.count(getattr(tok, attr + "_id")) == 1


def test_round_trip_of_arbitrary_text() -> None:
    tok = build_tokenizer()
    text = "Ünïcode 猫 and a handwritten digit 7, \ttabs\nnewlines!"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template_puts_the_image_placeholder_first() -> None:
    tok = build_tokenizer()
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
         {"role": "assistant", "content": "A cat."}],
        tokenize=False,
    )
    assert text == ("<|im_start|>user\n<IMG_CONTEXT>\nDescribe.<|im_end|>\n"
                    "<|im_start|>assistant\nA cat.<|im_end|>\n")


def test_a_foreign_tokenizer_gets_the_image_tokens_and_template() -> None:
    """What build_model does with an LLM's own tokenizer (e.g. Qwen's): add InternVL's tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from jobs.vlm.model import build_processor, chat_prompt

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["some other corpus entirely"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    foreign = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>")
    before = len(foreign)
    processor = build_processor("tiny", tokenizer=foreign)
    tok = processor.tokenizer
    assert len(tok) == before + 5  # <|im_start|>, <img>, </img>, <IMG_CONTEXT>, <video>; pad reused
    assert tok.context_image_token == "<IMG_CONTEXT>" and tok.pad_token == "<|endoftext|>"
    from PIL import Image

    enc = processor(images=[Image.new("RGB", (64, 64))], text=[chat_prompt(processor, "hi")])
    assert enc["input_ids"][0].count(tok.context_image_token_id) == processor.image_seq_length
