"""What the inference code passes around: prompts, decoding options, timings, results, and left-padded batches.

Kept apart from the pipeline so that training, evaluation, reuse and serving use these plain pieces without
importing the model code.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from ..alignment.tokens import PART_SEPARATOR, Messages, encode, render, with_brief
from ..errors import C2CError


@dataclass(frozen=True)
class Briefed:
    """A prompt the sharers read with a brief the receiver never sees (a passage, a document): what C2C must
    carry across. The receiver alone reads `prompt`; the sharers read `with_brief(prompt, brief)`."""

    prompt: str | Messages
    brief: str
    parts: tuple[str, ...] = ()  # several senders' documents: part j is read by sharer j alone (mode translated)

    @classmethod
    def of_parts(cls, prompt: str | Messages, parts: Sequence[str]) -> "Briefed":
        """A brief of several senders' parts, joined by a blank line (what the receiver would read, and what
        every sharer reads in the modes that give all of them the whole brief)."""
        return cls(prompt, PART_SEPARATOR.join(p.strip() for p in parts), tuple(parts))


Prompt = str | Messages | Briefed


@dataclass
class GenerateOptions:
    """Decoding settings shared by every mode (so baselines decode exactly like C2C)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    min_new_tokens: int = 0  # > 0 ignores EOS until then (benchmarks decode a fixed number of tokens)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and math.isfinite(self.top_p)):
            raise C2CError(f"temperature and top_p must be finite numbers, got {self.temperature}, {self.top_p}")
        if self.max_new_tokens < 1:
            raise C2CError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise C2CError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.temperature <= 0:
            raise C2CError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise C2CError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise C2CError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class Timings:
    """Wall-clock seconds of each phase for the whole batch (CUDA is synchronised before each reading).

    `receiver_prefill_s` is the answering model's prefill: the receiver's, or in mode "sharer" the sharer's.
    `t2t_sharer_s` is text-to-text's extra cost: the sharer writing its notes (prefill + decode)."""

    t2t_sharer_s: float = 0.0
    sharer_prefill_s: float = 0.0
    fuse_s: float = 0.0
    receiver_prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.t2t_sharer_s + self.sharer_prefill_s + self.fuse_s + self.receiver_prefill_s + self.decode_s

    def to_dict(self) -> dict:
        return {**asdict(self), "total_s": self.total_s}


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int  # tokens of the answering model's prompt
    new_tokens: int  # generated tokens up to and including EOS
    sharer_prompt_tokens: list[int] = field(default_factory=list)
    notes: str | None = None  # text-to-text: what the sharer wrote for the receiver


@dataclass
class GenerationOutput:
    mode: str
    results: list[GenerationResult]
    timings: Timings

    def to_dict(self) -> dict:
        return {"mode": self.mode, "results": [asdict(r) for r in self.results], "timings": self.timings.to_dict()}


@dataclass(frozen=True)
class BlindMessage:
    """A row's message the receiver never reads: what its senders read (the messages with `brief` before the
    last user text; `parts`, one per sender) and the positions it lands on (the batch's head block)."""

    messages: Messages
    brief: str
    parts: tuple[str, ...] = ()


@dataclass
class Batch:
    """Left-padded tensors for one batch of prompts, laid out as [head | what the answering model reads].

    The first `head` columns (left-padded) are written by maps that write positions the receiver never reads
    (translators; `blind` holds each row's message, None for a row without one); the rest the answering model
    reads itself, and maps that add to what it read (fusers) add there, from the sharers' prompts in `sharers`.
    """

    ids: torch.Tensor  # (B, L) the answering model's prompt
    mask: torch.Tensor  # (B, L)
    sharers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per sharer: ids (B, Ls), mask, index (B, L)
    blind: list[BlindMessage | None] = field(default_factory=list)
    head: int = 0


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    width = max(len(r) for r in rows)
    pads = [width - len(r) for r in rows]
    ids = torch.tensor([[pad_id] * p + list(r) for p, r in zip(pads, rows)], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * p + [1] * len(r) for p, r in zip(pads, rows)], dtype=torch.long, device=device)
    return ids, mask, pads


def plain_batch(model, messages: Sequence[Messages], chat: bool, new_tokens: int) -> Batch:
    """One model's rendering of each prompt, left-padded (no sharer, no head)."""
    rows = [encode(model.tokenizer, render(model.tokenizer, m, chat))[0] for m in messages]
    for r in rows:
        check_length(model, len(r), new_tokens)
    ids, mask, _ = left_pad(rows, model.tokenizer.pad_token_id, model.device)
    return Batch(ids, mask, [])


def aligned_batch(receiver, sharers: Sequence, aligned: Sequence[Sequence]) -> Batch:
    """Left-pad aligned prompts (`alignment.tokens.AlignedPrompt`; outer index: sharer, inner: prompt) and map
    the receiver's padded positions to each sharer's padded positions."""
    rows = [a.receiver_ids for a in aligned[0]]
    ids, mask, pads = left_pad(rows, receiver.tokenizer.pad_token_id, receiver.device)
    per_sharer = []
    for sharer, per_prompt in zip(sharers, aligned):
        s_ids, s_mask, s_pads = left_pad([a.sharer_ids for a in per_prompt], sharer.tokenizer.pad_token_id,
                                         sharer.device)  # fmt: skip
        index = torch.zeros_like(ids)
        for b, a in enumerate(per_prompt):
            index[b, pads[b]:] = torch.tensor(a.sharer_index, device=ids.device) + s_pads[b]
        per_sharer.append((s_ids, s_mask, index))
    return Batch(ids, mask, per_sharer)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad continuations (responses, answer options) that follow a prompt: ids and mask, both (B, R)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding: each row starts at 0 on its first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def check_length(model, n: int, new_tokens: int) -> None:
    """Raise C2CError unless `n` prompt tokens and `new_tokens` fit in `model`'s context."""
    if n + new_tokens > model.max_length:
        raise C2CError(f"prompt ({n} tokens) + {new_tokens} new tokens exceeds {model.name}'s context of "
                       f"{model.max_length} tokens")  # fmt: skip


def to_messages(prompt: Prompt) -> Messages:
    """The messages the receiver reads."""
    if isinstance(prompt, Briefed):
        return to_messages(prompt.prompt)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise C2CError("the prompt is empty")
        return [{"role": "user", "content": prompt}]
    if not prompt or not any(m.get("content", "").strip() for m in prompt):
        raise C2CError("the prompt is empty")
    return prompt


def sharer_messages(prompt: Prompt) -> Messages:
    """The messages the sharers read: the receiver's, with the brief if there is one."""
    messages = to_messages(prompt)
    return with_brief(messages, prompt.brief) if isinstance(prompt, Briefed) and prompt.brief.strip() else messages
