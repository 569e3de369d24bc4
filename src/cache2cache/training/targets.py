"""The sharer's next-token distribution as a target at the receiver's positions, across tokenizers.

Distillation toward the sharer (losses.py) compares two distributions at every continuation token. With one
vocabulary that is exact. Across tokenizers it is done where it means the same thing:
- positions: the receiver predicts its token j after the characters before it; the sharer predicts after the
  same characters only where its own tokenization of the continuation has a boundary there (both start a token
  at that character);
- outcomes: token strings both vocabularies hold (`VocabBridge`); both distributions are restricted to them and
  renormalised, so the KL compares the same events.
On the default pair (SmolLM2 <- Qwen2.5) 80% of the receiver's token strings are in the sharer's vocabulary and
97.7% of option-token positions have a shared boundary (docs/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..alignment.tokens import encode


def _strings(tok: PreTrainedTokenizerBase) -> dict[str, int]:
    """Each token's text -> its id (the first id where two tokens spell the same text); special tokens kept."""
    out: dict[str, int] = {}
    for token, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
        out.setdefault(tok.convert_tokens_to_string([token]), i)
    return out


@dataclass
class VocabBridge:
    """The token strings both vocabularies hold: `receiver_ids[i]` and `sharer_ids[i]` spell the same text.
    `identical` when the vocabularies are one (then the ids are not needed)."""

    receiver_ids: torch.Tensor
    sharer_ids: torch.Tensor
    identical: bool
    receiver_size: int

    @classmethod
    def between(cls, receiver: PreTrainedTokenizerBase, sharer: PreTrainedTokenizerBase) -> "VocabBridge":
        if receiver.get_vocab() == sharer.get_vocab():
            ids = torch.arange(len(receiver))
            return cls(ids, ids, True, len(receiver))
        r, s = _strings(receiver), _strings(sharer)
        both = sorted(set(r) & set(s), key=r.__getitem__)
        return cls(torch.tensor([r[t] for t in both]), torch.tensor([s[t] for t in both]), False, len(r))

    @property
    def coverage(self) -> float:
        """Share of the receiver's token strings the sharer's vocabulary also holds."""
        return len(self.receiver_ids) / max(1, self.receiver_size)


@dataclass
class SharerRows:
    """The sharer's tokenization of the receiver's continuation rows, and where each receiver position's
    prediction is read off the sharer's: `at[n, j]` is the sharer position predicting the token that starts where
    receiver token j starts, -1 where the sharer has no boundary there."""

    ids: list[list[int]]
    at: torch.Tensor  # (N, R) long


def sharer_rows(receiver: PreTrainedTokenizerBase, sharer: PreTrainedTokenizerBase, rows: list[list[int]],
                width: int) -> SharerRows:  # fmt: skip
    """Each receiver row (ids) decoded to text and re-read by the sharer; a row whose text does not re-encode to
    the same receiver ids is left without targets (its positions cannot be placed)."""
    ids, at = [], torch.full((len(rows), width), -1, dtype=torch.long)
    for n, row in enumerate(rows):
        text = receiver.decode(row)
        r_ids, r_spans = encode(receiver, text)
        s_ids, s_spans = encode(sharer, text)
        ids.append(s_ids or [sharer.eos_token_id])
        if r_ids != list(row):
            continue
        starts = {start: k for k, (start, _) in enumerate(s_spans)}
        for j, (start, _) in enumerate(r_spans):
            if start in starts:
                at[n, j] = starts[start]
    return SharerRows(ids, at)
