"""Conversations -> token ids for training: the aligned prompt (what sharer and receiver prefill) and the
receiver's response tokens (what the loss is computed on), plus padding into batches."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm import tqdm

from ..alignment.tokens import AlignedPrompt, TokenAligner, encode, render
from ..inference.batching import Batch, Briefed, aligned_batch, right_pad, sharer_messages
from ..inference.pipeline import C2CModel
from .data import Conversation


@dataclass
class TrainExample:
    prompt: AlignedPrompt
    response_ids: list[int]  # for a multiple-choice example: the gold option's tokens
    option_ids: list[list[int]] = field(default_factory=list)  # every option, as cloze scoring reads it
    option_chars: list[int] = field(default_factory=list)  # characters per option (cloze normalises by them)
    answer: int = -1

    @property
    def rows(self) -> int:
        """Continuation rows this example adds to a batch: one per option, or the response alone."""
        return len(self.option_ids) or 1

    @property
    def continuation_tokens(self) -> int:
        """Tokens this example's continuation rows hold (every option's, or the response's)."""
        return sum(len(o) for o in self.option_ids) or len(self.response_ids)


@dataclass
class TrainBatch:
    """A micro-batch. Every example's prompt is prefilled and fused once; its cache is then copied to one row per
    continuation (the response, or each option of a multiple-choice example)."""

    prompt: Batch  # left-padded prompts (B), with the sharers' aligned ids and index
    owner: torch.Tensor  # (N,) the example each continuation row belongs to
    response_ids: torch.Tensor  # (N, R) right-padded continuation tokens (the labels)
    response_mask: torch.Tensor  # (N, R) 1 on real tokens
    trained: torch.Tensor  # (N,) 1 where the row's tokens enter the cross-entropy (responses, gold options)
    option_chars: torch.Tensor  # (N,) characters of each option (1 for responses)
    groups: list[tuple[list[int], int]]  # per multiple-choice example: its option rows and the gold one's place

    @property
    def num_targets(self) -> int:
        return int((self.response_mask * self.trained[:, None]).sum())


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
        prompt = aligner.align(conv.prompt, sharer_messages=sharer_messages(Briefed(conv.prompt, conv.brief)))
        if len(prompt.receiver_ids) > max_prompt_tokens or len(prompt.sharer_ids) > max_prompt_tokens:
            skipped["prompt too long"] += 1
            continue
        if conv.options:
            options = [f" {o}" for o in conv.options]  # exactly as cloze scoring continues the prompt
            opt_ids = [encode(aligner.receiver, o)[0][:max_response_tokens] for o in options]
            if not all(opt_ids):
                skipped["empty option after tokenisation"] += 1
                continue
            out.append(TrainExample(prompt, opt_ids[conv.answer], opt_ids, [len(o) for o in options], conv.answer))
            continue
        resp = response_ids(aligner, conv)[:max_response_tokens]
        if not resp:
            skipped["empty response after tokenisation"] += 1
            continue
        out.append(TrainExample(prompt, resp))
    return out, skipped


def collate(model: C2CModel, examples: Sequence[TrainExample]) -> TrainBatch:
    prompt = aligned_batch(model.receiver, model.sharers, [[e.prompt for e in examples]])
    rows, owner, trained, chars, groups = [], [], [], [], []
    for b, e in enumerate(examples):
        if e.option_ids:
            groups.append((list(range(len(rows), len(rows) + len(e.option_ids))), e.answer))
            rows += e.option_ids
            trained += [int(i == e.answer) for i in range(len(e.option_ids))]
            chars += e.option_chars
        else:
            rows.append(e.response_ids)
            trained.append(1)
            chars.append(1)
        owner += [b] * e.rows
    device = model.receiver.device
    ids, mask = right_pad(rows, model.receiver.tokenizer.pad_token_id, device)
    return TrainBatch(prompt, torch.tensor(owner, device=device), ids, mask, torch.tensor(trained, device=device),
                      torch.tensor(chars, dtype=torch.float32, device=device), groups)  # fmt: skip
