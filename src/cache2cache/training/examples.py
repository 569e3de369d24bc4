"""Conversations -> token ids for training: the aligned prompt (what sharer and receiver prefill) and the
receiver's response tokens (what the loss is computed on), plus padding into batches."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm import tqdm

from ..alignment.tokens import AlignedPrompt, TokenAligner, encode, render
from ..inference.pipeline import Batch, C2CModel, right_pad
from .data import Conversation


@dataclass
class TrainExample:
    prompt: AlignedPrompt
    response_ids: list[int]


@dataclass
class TrainBatch:
    prompt: Batch  # left-padded prompt, with the sharer's aligned ids and index
    response_ids: torch.Tensor  # (B, R) right-padded response tokens (the labels)
    response_mask: torch.Tensor  # (B, R) 1 on real response tokens

    @property
    def num_targets(self) -> int:
        return int(self.response_mask.sum())


def response_ids(aligner: TokenAligner, conv: Conversation) -> list[int]:
    """The receiver's tokens for the assistant turn, end-of-turn markers included, so that the fused receiver
    learns to stop. Taken as the suffix of the whole rendered conversation after the rendered prompt."""
    tok = aligner.receiver
    prompt_text = render(tok, conv.prompt)
    full = render(tok, conv.prompt + [{"role": "assistant", "content": conv.response}], add_generation_prompt=False)
    if full.startswith(prompt_text):
        return encode(tok, full[len(prompt_text):])[0]
    return encode(tok, conv.response)[0] + [tok.eos_token_id]  # a template that rewrites earlier turns


def build_examples(
    aligner: TokenAligner, conversations: Sequence[Conversation], max_prompt_tokens: int, max_response_tokens: int,
    needed: int | None = None, progress: bool = False,
) -> tuple[list[TrainExample], Counter]:
    """Tokenise and align, in order, until `needed` examples exist (all by default); over-long prompts are skipped
    (cutting would break the template), responses are truncated. Returns the examples and skip reasons."""
    out, skipped = [], Counter()
    for conv in tqdm(conversations, desc="tokenise + align", unit="conv", disable=not progress, dynamic_ncols=True):
        if needed is not None and len(out) >= needed:
            break
        prompt = aligner.align(conv.prompt)
        if len(prompt.receiver_ids) > max_prompt_tokens or len(prompt.sharer_ids) > max_prompt_tokens:
            skipped["prompt too long"] += 1
            continue
        resp = response_ids(aligner, conv)[:max_response_tokens]
        if not resp:
            skipped["empty response after tokenisation"] += 1
            continue
        out.append(TrainExample(prompt, resp))
    return out, skipped


def collate(model: C2CModel, examples: Sequence[TrainExample]) -> TrainBatch:
    prompt = model.batch_from_aligned([[e.prompt for e in examples]])
    ids, mask = right_pad([e.response_ids for e in examples], model.receiver.tokenizer.pad_token_id,
                          model.receiver.device)  # fmt: skip
    return TrainBatch(prompt, ids, mask)
