"""What a translator reads and writes: positions-free keys and values, and a brief's place in each model's prompt.

Keys in a cache carry their position as a rotation (RoPE). A map from one model's keys to another's must not
learn positions, so both sides are un-rotated first (`unrotate`: the *pre-RoPE* keys), and translated keys are
rotated at the receiver's positions afterwards (`rotate`). Values carry no position.

A brief is a span of text inside a rendered prompt. `BriefSpan` finds it in each model's own rendering (the
receiver's and the sharer's templates differ), so that receiver token i of the brief can read the sharer token
that covers the same last character: the receiver-blind prompt is the receiver's own tokens before the brief,
translated keys and values for the brief's tokens, and the receiver's own tokens after it.
"""

from __future__ import annotations

import bisect
import inspect
from dataclasses import dataclass

import torch

from ..alignment.tokens import Messages, encode, render, with_brief
from ..errors import C2CError
from ..models.loading import LoadedModel

_MARK = "\u2063\u2063brief\u2063\u2063"  # invisible separators: never part of real text


def layer_types(model: LoadedModel) -> list[str]:
    cfg = model.model.config.get_text_config()
    return list(getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers)


@torch.no_grad()
def rotary(model: LoadedModel, layer: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (T, head_dim) float32, that `model`'s layer `layer` rotates its keys with at `positions`."""
    emb = model.model.model.rotary_emb
    x = torch.zeros(1, dtype=torch.float32, device=positions.device)
    kwargs = {}
    if "layer_type" in inspect.signature(emb.forward).parameters:
        kwargs["layer_type"] = layer_types(model)[layer]
    cos, sin = emb(x, positions[None].to(emb_device(emb)), **kwargs)
    return cos[0].float().to(positions.device), sin[0].float().to(positions.device)


def emb_device(module: torch.nn.Module) -> torch.device:
    return next((b.device for b in module.buffers()), torch.device("cpu"))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to pre-RoPE keys (..., T, D) with (T, D) cos/sin (the transformers convention)."""
    return keys * cos + _rotate_half(keys) * sin


def unrotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Undo `rotate` (also when a RoPE variant scales cos and sin)."""
    return (keys * cos - _rotate_half(keys) * sin) / (cos * cos + sin * sin)


@dataclass
class BriefSpan:
    """One model's rendering of a prompt with a brief: token ids, and which tokens belong to the brief.

    Tokens [0, start) come before the brief (template, earlier turns), [start, end) overlap the brief's
    characters, [end, len) come after it (the question and the generation prompt). `spans` are the brief tokens'
    character spans relative to the brief's first character."""

    ids: list[int]
    start: int
    end: int
    spans: list[tuple[int, int]]

    @classmethod
    def of(cls, model: LoadedModel, messages: Messages, brief: str, chat: bool = True) -> "BriefSpan":
        """`messages` with `brief` placed as `with_brief` places it, rendered with `model`'s template."""
        brief = brief.strip()
        if not brief:
            raise C2CError("the brief is empty")
        marked = render(model.tokenizer, with_brief(messages, _MARK), chat)
        if marked.count(_MARK) != 1:
            raise C2CError(f"{model.name}'s chat template does not keep the brief verbatim")
        a = marked.index(_MARK)
        text = marked.replace(_MARK, brief)
        b = a + len(brief)
        ids, spans = encode(model.tokenizer, text)
        start = next((i for i, (_, e) in enumerate(spans) if e > a), len(ids))
        end = next((i for i, (s, _) in enumerate(spans) if s >= b), len(ids))
        if end <= start:
            raise C2CError("the brief has no tokens of its own")
        return cls(ids, start, end, [(max(s, a) - a, min(e, b) - a) for s, e in spans[start:end]])

    @property
    def brief_ids(self) -> list[int]:
        return self.ids[self.start:self.end]


def align_spans(receiver: list[tuple[int, int]], sharer: list[tuple[int, int]]) -> list[int]:
    """For each receiver token (character span), the sharer token that covers its last character (the same rule
    as the "offsets" token alignment): the sharer position that has read everything the receiver token holds."""
    ends = [e for _, e in sharer]
    out = []
    for s, e in receiver:
        last = max(e, s + 1) - 1
        out.append(min(bisect.bisect_right(ends, last), len(sharer) - 1))
    return out
