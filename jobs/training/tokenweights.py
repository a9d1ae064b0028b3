"""Per-token loss weights: uniform, or IDF over a sub-stage's targets, so content tokens count more."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
import torch

from jobs.training.packing import IGNORE, TokenizedSample


class LossWeights:
    """Weights of target tokens by id; `uniform()` is the plain mean cross-entropy."""

    def __init__(self, table: np.ndarray | None) -> None:
        self.table = table  # float32 weight per token id, or None for uniform

    @classmethod
    def uniform(cls) -> LossWeights:
        return cls(None)

    @classmethod
    def idf(cls, samples: Iterable[TokenizedSample], vocab_size: int, strength: float) -> LossWeights:
        """IDF weights from the target token ids of `samples` (document frequency per sample).

        Token id t weighs `1 + strength * ln((N + 1) / (df + 1))`, df counting the N samples whose
        targets hold it: ~1 for a token in every caption, ~1 + 2.3 * strength in one of ten. Why:
        reference captions are a template in which only a token or two depends on the image; with
        a uniform loss that token is ~1/30 of the signal and a small model learns the template first.
        The loss is then sum(w * ce) / sum(w).
        """
        df: Counter[int] = Counter()
        n = 0
        for s in samples:
            n += 1
            df.update({t for t in s.labels[1:] if t != IGNORE})
        top = 1.0 + strength * math.log(n + 1)  # a token never seen as a target: the rarest
        table = np.full(vocab_size, top, dtype=np.float32)
        for token, count in df.items():
            if 0 <= token < vocab_size:
                table[token] = 1.0 + strength * math.log((n + 1) / (count + 1))
        return cls(table)

    @property
    def is_uniform(self) -> bool:
        return self.table is None

    def of(self, sample: TokenizedSample) -> float:
        """The summed weight of a sample's targets (after the model's one-token shift)."""
        if self.table is None:
            return float(sample.target_tokens)
        labels = np.asarray(sample.labels[1:], dtype=np.int64)
        labels = labels[labels != IGNORE]
        return float(self.table[labels].sum()) if labels.size else 0.0

    def tensor(self, labels: torch.Tensor) -> torch.Tensor:
        """Per-position weights for a labels tensor: 0 where the label is IGNORE."""
        mask = labels != IGNORE
        if self.table is None:
            return mask.float()
        table = torch.from_numpy(self.table).to(labels.device)
        return table[labels.clamp(min=0)] * mask

    def describe(self) -> dict[str, float]:
        """Summary for the report: min / max weight seen (uniform: both 1)."""
        if self.table is None:
            return {"min": 1.0, "max": 1.0}
        return {"min": round(float(self.table.min()), 3), "max": round(float(self.table.max()), 3)}
