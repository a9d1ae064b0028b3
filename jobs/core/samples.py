"""The built-in sample source (`source: samples`): scikit-learn's digits and scikit-image's photos,
made into a deterministic set for every stage of the recipe."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from jobs.core.shards import encode_image
from sailk8s.stageconfig.filter import DEFAULT_JUDGE_PROMPT
from sailk8s.stageconfig.ingest import SampleSizes

CAPTION_QUESTION = "<image>\nDescribe this image in detail."
DIGIT_QUESTION = "<image>\nWhich digit is this? Answer with a single digit."
PARITY_QUESTION = "<image>\nIs the digit in this image odd or even? Answer with one word."
DESCRIBE_QUESTION = "<image>\nDescribe the image."
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# scikit-image photos: (loader name, useful alt-text, detailed reference description).
PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "NASA astronaut Eileen Collins official portrait",
     "A portrait photo of a smiling astronaut in an orange flight suit in front of an American flag, "
     "with a space shuttle model on the left."),
    ("coffee", "cup of coffee on a saucer",
     "A close-up color photo of a red cup of coffee with a spoon on a white saucer, seen from above "
     "on a wooden table."),
    ("chelsea", "Chelsea the cat",
     "A color photo of an orange tabby cat with striped fur lying down and looking to the left."),
    ("cat", "my cat chelsea lol",
     "A color photo of an orange tabby cat with striped fur lying down and looking to the left."),
    ("rocket", "SpaceX Falcon 9 on the launch pad",
     "A color photo of a white rocket standing on a launch pad under a blue sky, with service towers "
     "beside it."),
    ("hubble_deep_field", "Hubble Deep Field",
     "A dark image of deep space filled with many small colorful galaxies of different shapes."),
    ("coins", "Greek coins from Pompeii",
     "A grayscale photo of two dozen old coins arranged in rows on a dark background."),
    ("camera", "cameraman",
     "A grayscale photo of a man in a dark coat looking through a camera on a tripod in a field."),
    ("moon", "surface of the moon",
     "A grayscale close-up of the moon's surface with craters and dark plains."),
    ("page", "scanned book page",
     "A grayscale scan of a printed book page with several lines of dense text."),
    ("text", "text on a sign",
     "A grayscale photo of handwritten and printed text on a light background."),
    ("clock", "wall clock",
     "A grayscale photo of a round wall clock with numbers and hands, slightly blurred."),
    ("immunohistochemistry", "IHC stained tissue sample microscope",
     "A microscope image of stained tissue with brown and blue cells on a light background."),
    ("retina", "retina fundus photograph",
     "A color photo of the back of a human eye: an orange-red retina with branching blood vessels "
     "and a bright optic disc."),
    ("colorwheel", "color wheel",
     "A circular color wheel with smoothly blended hues from red through green to blue."),
    ("brick", "brick wall texture",
     "A grayscale close-up of a brick wall with a regular pattern of bricks and mortar lines."),
    ("grass", "grass texture",
     "A grayscale close-up texture of dense grass blades."),
    ("gravel", "gravel texture",
     "A grayscale close-up texture of small stones and gravel."),
    ("cell", "cell under microscope",
     "A grayscale microscope image of a single cell with a textured interior."),
    ("microaneurysms", "retinal microaneurysms",
     "A small grayscale medical image of retinal blood vessels with dark spots."),
)
NOISY_ALT = ("IMG_4821.JPG", "free hd wallpaper download", "click here", "image", "untitled-1.png",
             "photo by admin", "best price buy now", "DSC00042", "screenshot 2019-03-02", "thumbnail")
DIGIT_ALT = ("handwritten digit {d}", "a handwritten number {w}", "scanned digit {d} from a form",
             "number {d}", "hand-written {w} ({d})")


@dataclass(frozen=True)
class Item:
    """One generated sample, before encoding: key, image and json fields."""

    key: str
    image: Image.Image
    meta: dict[str, Any]


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


@lru_cache(maxsize=64)
def _photo(name: str, max_side: int) -> tuple[Image.Image, tuple[int, int]] | None:
    import skimage.data

    try:
        arr = np.asarray(getattr(skimage.data, name)())
    except Exception:  # a photo that needs a download (none of ours): skip it
        return None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = (255 * (arr - arr.min()) / max(float(np.ptp(arr)), 1e-6)).astype(np.uint8)
    img = Image.fromarray(arr).convert("RGB")
    orig = img.size
    if max(orig) > max_side:
        scale = max_side / max(orig)
        new_size = (max(1, round(orig[0] * scale)), max(1, round(orig[1] * scale)))
        img = img.resize(new_size, Image.Resampling.BICUBIC)
    return img, orig


def digit_image(index: int, size: int) -> Image.Image:
    """Digit `index` as an RGB image: dark ink on paper-white, bilinear upscaled."""
    images, _ = _digits()
    arr = 255 - (images[index] * (255.0 / 16.0))
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="L")
    return img.resize((size, size), Image.Resampling.BILINEAR).convert("RGB")


def digit_label(index: int) -> int:
    """The true digit of sample `index`."""
    return int(_digits()[1][index])


def _split(sizes: SampleSizes) -> tuple[list[int], list[int]]:
    """(eval indices, train pool) from one seeded permutation: eval first, disjoint."""
    n = len(_digits()[1])
    perm = list(range(n))
    random.Random(sizes.seed).shuffle(perm)
    if sizes.eval_digits >= n:
        raise ValueError(f"eval_digits={sizes.eval_digits} leaves no training digits (only {n})")
    return perm[: sizes.eval_digits], perm[sizes.eval_digits:]


def _take(pool: list[int], n: int) -> list[int]:
    """The first n of the pool, cycling when n exceeds it (deterministic)."""
    return [pool[i % len(pool)] for i in range(n)] if pool else []


def digit_alt_text(index: int, seed: int) -> tuple[str, str]:
    """(alt_text, quality) for a digit, of web quality on purpose, deterministic per index.

    About 60% useful ("handwritten digit 7"), 25% noise ("IMG_4821.JPG") and 15% wrong (another digit).
    """
    rng = random.Random(f"{seed}-alt-{index}")
    label = digit_label(index)
    r = rng.random()
    if r < 0.60:
        d = label
        quality = "useful"
    elif r < 0.85:
        return rng.choice(NOISY_ALT), "noisy"
    else:
        d = (label + rng.randint(1, 9)) % 10
        quality = "wrong"
    return rng.choice(DIGIT_ALT).format(d=d, w=NUMBER_WORDS[d]), quality


def digit_description(index: int) -> str:
    """A detailed reference-style description of a digit image."""
    label = digit_label(index)
    images, _ = _digits()
    ink = float(images[index].mean()) / 16.0
    weight = "thick, bold" if ink > 0.33 else ("thin" if ink < 0.25 else "medium-width")
    return (f"A handwritten digit {label} ({NUMBER_WORDS[label]}) written in {weight} dark strokes on "
            f"a light background, centered in a small square, low-resolution scan.")


def _digit_item(key: str, index: int, sizes: SampleSizes, extra: dict[str, Any]) -> Item:
    img = digit_image(index, sizes.image_size)
    meta = {"source": f"sklearn-digits/{index}", "width": img.width, "height": img.height, **extra}
    return Item(key, img, meta)


def _raw_photo_items(sizes: SampleSizes) -> list[Item]:
    items = []
    for name, alt, _ in PHOTOS:
        got = _photo(name, sizes.photo_max_side)
        if got is None:
            continue
        img, orig = got
        items.append(Item(f"photo-{name.replace('_', '-')}", img,
                          {"alt_text": alt, "source": f"skimage.data/{name}", "kind": "photo",
                           "width": img.width, "height": img.height,
                           "orig_width": orig[0], "orig_height": orig[1]}))
    return items


def raw_items(sizes: SampleSizes) -> list[Item]:
    """The `raw` set, the caption stage's input: digits and photos with web-quality alt-texts, some
    exact and near duplicates, 12 px thumbnails; alt_text, source, width, height, label, kind."""
    _, pool = _split(sizes)
    items: list[Item] = []
    for idx in _take(pool, sizes.raw_digits):
        alt, quality = digit_alt_text(idx, sizes.seed)
        items.append(_digit_item(f"digit-{idx:04d}", idx, sizes,
                                 {"alt_text": alt, "alt_quality": quality, "label": digit_label(idx),
                                  "kind": "digit"}))
    items.extend(_raw_photo_items(sizes))
    rng = random.Random(f"{sizes.seed}-dups")
    base = list(items)
    for i in range(min(sizes.duplicates, len(base))):
        src = rng.choice(base)
        # Half exact re-uploads, half slightly brightened copies (near duplicates).
        img = src.image if i % 2 == 0 else src.image.point(lambda v: min(255, v + 6))
        items.append(Item(f"{src.key}-dup{i}", img, {**src.meta, "alt_text": rng.choice(NOISY_ALT)}))
    for i in range(min(sizes.thumbnails, len(base))):
        src = base[(i * 7) % len(base)]
        thumb = src.image.resize((12, 12), Image.Resampling.BILINEAR)
        items.append(Item(f"{src.key}-thumb{i}", thumb,
                          {**src.meta, "width": 12, "height": 12, "alt_text": "thumbnail"}))
    return items


def reference_digits(sizes: SampleSizes) -> list[int]:
    """The reference digits: the pool after raw's digits (cycling if the pool runs out)."""
    _, pool = _split(sizes)
    rest = pool[sizes.raw_digits:] or pool
    return _take(rest, sizes.reference_digits)


def reference_items(sizes: SampleSizes) -> list[Item]:
    """The `reference` set: digits not in raw and raw's first photos, with detailed `caption`s.

    The stand-in for SAIL-VL's GPT-4o references. Its digits are not raw's, so every raw digit a
    captioner recaptions is one it never trained on.
    """
    items = []
    for idx in reference_digits(sizes):
        alt, quality = digit_alt_text(idx, sizes.seed)
        items.append(_digit_item(f"digit-{idx:04d}", idx, sizes,
                                 {"alt_text": alt, "alt_quality": quality, "label": digit_label(idx),
                                  "kind": "digit", "caption": digit_description(idx)}))
    photos = {name: ref for name, _, ref in PHOTOS}
    for item in _raw_photo_items(sizes)[: sizes.reference_photos]:
        name = item.meta["source"].split("/", 1)[1]
        items.append(Item(item.key, item.image, {**item.meta, "caption": photos[name]}))
    return items


def _conv(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def sft_knowledge_items(sizes: SampleSizes) -> list[Item]:
    """LLaVA-style 'Describe the image.' conversations (digits, then photos)."""
    _, pool = _split(sizes)
    items = [_digit_item(f"digit-{idx:04d}", idx, sizes,
                         {"conversations": _conv(DESCRIBE_QUESTION, digit_description(idx)),
                          "label": digit_label(idx)})
             for idx in _take(pool, sizes.sft_knowledge_digits)]
    refs = {name: ref for name, _, ref in PHOTOS}
    for item in _raw_photo_items(sizes):
        name = item.meta["source"].split("/", 1)[1]
        meta = {k: v for k, v in item.meta.items() if k != "alt_text"}
        conv = _conv(DESCRIBE_QUESTION, refs[name])
        items.append(Item(item.key, item.image, {**meta, "conversations": conv}))
    return items


def sft_instruction_items(sizes: SampleSizes) -> list[Item]:
    """Digit questions: 'Which digit is this?' and about 15% odd/even."""
    _, pool = _split(sizes)
    items = []
    for n, idx in enumerate(_take(pool, sizes.sft_instruction_digits)):
        label = digit_label(idx)
        rng = random.Random(f"{sizes.seed}-instr-{n}")
        if rng.random() < 0.15:
            conv = _conv(PARITY_QUESTION, "even" if label % 2 == 0 else "odd")
        else:
            conv = _conv(DIGIT_QUESTION, str(label))
        meta = {"conversations": conv, "label": label}
        items.append(_digit_item(f"digit-{idx:04d}-{n:05d}", idx, sizes, meta))
    return items


def eval_items(sizes: SampleSizes) -> list[Item]:
    """Held-out digit QA (question, answer, choices "0".."9"); these digits appear in no training set."""
    held, _ = _split(sizes)
    return [_digit_item(f"digit-{idx:04d}", idx, sizes,
                        {"question": DIGIT_QUESTION, "answer": str(digit_label(idx)),
                         "choices": [str(d) for d in range(10)], "label": digit_label(idx)})
            for idx in held]


def caption_eval_items(sizes: SampleSizes) -> list[Item]:
    """The captioner's held-out check: describe an eval digit; the answer is the digit it must name.

    The choices carry their number words as `choice_aliases` ("7" is also "seven").
    """
    held, _ = _split(sizes)
    aliases = {str(d): [NUMBER_WORDS[d]] for d in range(10)}
    return [_digit_item(f"digit-{idx:04d}", idx, sizes,
                        {"question": CAPTION_QUESTION, "answer": str(digit_label(idx)),
                         "choices": [str(d) for d in range(10)], "choice_aliases": aliases,
                         "caption": digit_description(idx), "label": digit_label(idx)})
            for idx in held[: sizes.caption_eval_digits]]


def judge_reply(richness: int, alignment: int) -> str:
    """The judge's answer in the form `jobs.filters.scores.parse_ratings` reads."""
    return f"richness: {richness}, alignment: {alignment}"


def _judge_conv(caption: str, richness: int, alignment: int) -> list[dict[str, str]]:
    return _conv("<image>\n" + DEFAULT_JUDGE_PROMPT.replace("{caption}", caption),
                 judge_reply(richness, alignment))


def _other_label(indices: list[int], at: int) -> int:
    """The next digit after position `at` (cyclically) whose label differs from it."""
    label = digit_label(indices[at])
    for step in range(1, len(indices)):
        other = indices[(at + step) % len(indices)]
        if digit_label(other) != label:
            return other
    raise ValueError("every digit has the same label: no mismatched caption can be drawn")


def judge_items(sizes: SampleSizes) -> list[Item]:
    """SAIL-VL2-style judge conversations from the reference digits and photos.

    The filter's judge prompt with a caption -> "richness: R, alignment: A": the image's reference
    caption rates 4/5, another image's 4/1, a noisy alt-text 1/1, a short true alt-text 2/5.
    """
    digits = reference_digits(sizes)
    items: list[Item] = []
    for n, idx in enumerate(digits):
        label = digit_label(idx)
        other = _other_label(digits, n)
        rng = random.Random(f"{sizes.seed}-judge-{n}")
        pairs = [("match", digit_description(idx), 4, 5), ("mismatch", digit_description(other), 4, 1)]
        if n % 4 == 1:
            pairs.append(("noisy", rng.choice(NOISY_ALT), 1, 1))
        elif n % 4 == 3:
            pairs.append(("short", rng.choice(DIGIT_ALT).format(d=label, w=NUMBER_WORDS[label]), 2, 5))
        for tag, caption, rich, align in pairs:
            items.append(_digit_item(f"digit-{idx:04d}-{tag}", idx, sizes,
                                     {"conversations": _judge_conv(caption, rich, align), "label": label}))
    photos = [(it, ref) for it in _raw_photo_items(sizes)[: sizes.reference_photos]
              for name, _, ref in PHOTOS if it.meta["source"] == f"skimage.data/{name}"]
    for n, (item, ref) in enumerate(photos):
        wrong = next((r for _, r in photos[n + 1:] + photos[:n] if r != ref), None)
        meta = {k: v for k, v in item.meta.items() if k != "alt_text"}
        items.append(Item(f"{item.key}-match", item.image, {**meta, "conversations": _judge_conv(ref, 4, 5)}))
        if wrong is not None:
            items.append(Item(f"{item.key}-mismatch", item.image,
                              {**meta, "conversations": _judge_conv(wrong, 4, 1)}))
    return items


def judge_eval_items(sizes: SampleSizes) -> list[Item]:
    """Held-out judge pairs over the eval digits: every other caption belongs to another label."""
    held, _ = _split(sizes)
    digits = held[: sizes.judge_eval_pairs]
    items = []
    for n, idx in enumerate(digits):
        mismatched = n % 2 == 1
        caption = digit_description(_other_label(digits, n) if mismatched else idx)
        items.append(_digit_item(f"digit-{idx:04d}", idx, sizes,
                                 {"caption": caption, "mismatched": mismatched, "label": digit_label(idx)}))
    return items


# Each set is written as WebDataset shards under `<outputs[0]>/<set>/`.
BUILDERS = {"raw": raw_items, "reference": reference_items, "sft-knowledge": sft_knowledge_items,
            "sft-instruction": sft_instruction_items, "eval": eval_items,
            "caption-eval": caption_eval_items, "judge": judge_items, "judge-eval": judge_eval_items}


def encoded(items: list[Item], fmt: str = "png") -> Iterator[tuple[str, dict[str, Any], bytes]]:
    """(key, json fields, encoded image) per item."""
    for item in items:
        yield item.key, item.meta, encode_image(item.image, fmt)
