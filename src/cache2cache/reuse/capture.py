"""Same-base cache reuse (DroidSpeak, arXiv 2411.02820), part 1: model A's prefill, kept for model B.

A's prefill of each prompt (but its last token) is an ordinary `PromptCache` with its E-cache (the hidden state
entering every layer):
the same cache type that C2C and the agents pass around, consumed here a second way. A `Capture` is the
left-padded batch view of such caches that the reuse code reads: every prompt token but the last (the last one
is what B's generation feeds). Saved, it is the caches' own file (`save_caches`), so another process or host can
reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..alignment.tokens import encode, render
from ..caches.batched import left_pad_stack
from ..caches.identity import identity_of
from ..caches.prompt_cache import PromptCache, layer_inputs, load_caches, save_caches
from ..errors import C2CError
from ..inference.batching import Prompt, left_pad, positions, to_messages
from ..kv import new_cache
from ..models.loading import LoadedModel


@dataclass
class Capture:
    caches: list[PromptCache]  # A's cache of each whole prompt, with its E-cache
    ids: torch.Tensor  # (B, L) the full left-padded prompts
    mask: torch.Tensor  # (B, L)
    keys: list[torch.Tensor]  # per layer (B, kv_heads, L - 1, head_dim), every position (sliding layers too)
    values: list[torch.Tensor]
    hidden: list[torch.Tensor]  # per layer (B, L - 1, hidden): the E-cache, input of each layer

    @property
    def model(self) -> str:
        return self.caches[0].identity.name

    @property
    def geometry(self) -> dict:
        return self.caches[0].identity.geometry.to_dict()

    @classmethod
    def from_caches(cls, caches: list[PromptCache], pad_id: int = 0) -> "Capture":
        """The batch view of A's caches; `pad_id` fills the ids of left padding (masked out everywhere)."""
        if not caches or any(c.hidden is None for c in caches):
            raise C2CError("a capture needs at least one cache, each with its E-cache (hidden states)")
        if len({c.identity.fingerprint for c in caches}) != 1:
            raise C2CError("a capture's caches must all come from one model")
        if any(len(c.meta.get("pending", [])) != 1 or not len(c) for c in caches):
            raise C2CError("each cache of a capture covers a prompt but its last token, kept in meta['pending']")
        ids, mask, _ = left_pad([c.token_ids + c.meta["pending"] for c in caches], pad_id, caches[0].keys[0].device)
        width = ids.shape[1] - 1
        n = caches[0].identity.geometry.num_layers

        def stack(per_cache) -> list[torch.Tensor]:  # left-padded to (B, ..., L - 1, D)
            return [left_pad_stack([per_cache(c)[i] for c in caches], width) for i in range(n)]

        return cls(caches, ids, mask, stack(lambda c: c.keys), stack(lambda c: c.values), stack(lambda c: c.hidden))

    def bytes_per_token(self) -> dict[str, float]:
        tokens = int(self.mask[:, :-1].sum())
        kv = sum(t.numel() * t.element_size() for t in self.keys + self.values)
        e = sum(t.numel() * t.element_size() for t in self.hidden)
        per_pos = self.ids.shape[0] * (self.ids.shape[1] - 1)  # padded positions are stored too
        return {"kv": kv / per_pos, "e_cache": e / per_pos, "real_tokens": tokens}

    def save(self, path: Path) -> None:
        save_caches(path, self.caches)

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu") -> "Capture":
        return cls.from_caches(load_caches(path, device))


def tokenize(model: LoadedModel, prompts: list[Prompt], chat: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    if not prompts:
        raise C2CError("no prompts given")
    rows = [encode(model.tokenizer, render(model.tokenizer, to_messages(p), chat))[0] for p in prompts]
    ids, mask, _ = left_pad(rows, model.tokenizer.pad_token_id, model.device)
    if ids.shape[1] > model.max_length:
        raise C2CError(f"prompt of {ids.shape[1]} tokens exceeds {model.name}'s context of {model.max_length}")
    return ids, mask


@torch.no_grad()
def capture(model: LoadedModel, prompts: list[Prompt], chat: bool = True) -> Capture:
    """Prefill `model` (A) on every prompt token but the last, as one left-padded batch (what B's own batched
    prefill computes), keeping its KV cache and E-cache; each row becomes a `PromptCache` whose pending last
    token is kept in `meta["pending"]`."""
    ids, mask = tokenize(model, prompts, chat)
    if ids.shape[1] < 2:
        raise C2CError("prompts must be at least two tokens long to have a cache to reuse")
    inputs = layer_inputs(model)
    cache = new_cache(model.model.config, keep_full_history=True)
    try:
        model.model.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions(mask[:, :-1]),
                          past_key_values=cache, use_cache=True)  # fmt: skip
    finally:
        inputs.close()
    ident = identity_of(model)
    caches = []
    for b, messages in enumerate(to_messages(p) for p in prompts):
        pad = int((mask[b] == 0).sum())
        caches.append(PromptCache(ident, ids[b, pad:-1].tolist(), [layer.keys[b, :, pad:] for layer in cache.layers],
                                  [layer.values[b, :, pad:] for layer in cache.layers],
                                  [h[b, pad:] for h in inputs.states], messages, chat,
                                  {"pending": ids[b, -1:].tolist()}))  # fmt: skip
    return Capture.from_caches(caches, model.tokenizer.pad_token_id)
