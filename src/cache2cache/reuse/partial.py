"""Same-base cache reuse, part 2: build model B's cache from model A's capture, recomputing a few layer groups.

For a plan of contiguous groups [start, end), B runs its own layers start..end-1 from A's E-cache at `start`
(from B's own embeddings when start is 0) and keeps the KV they produce; every other layer keeps A's KV. The
plan "recompute everything" ([0, L)) is exactly B's own prefill; the empty plan reuses A's cache as it is.

B's layers outside the group are replaced by identities in a view of its decoder that shares the weights
(models/layer_view.py): no architecture-specific code here, and the shared model is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Cache

from ..errors import C2CError
from ..inference.batching import GenerateOptions, clock, positions
from ..kv import ModelGeometry, new_cache
from ..models.layer_view import only_layers
from ..models.loading import LoadedModel
from .capture import Capture


@dataclass(frozen=True)
class RecomputePlan:
    groups: tuple[tuple[int, int], ...]  # sorted, disjoint [start, end) layer ranges that B recomputes

    @classmethod
    def parse(cls, text: str, num_layers: int) -> "RecomputePlan":
        """"none", "all", or "0-2,10-12" (inclusive ranges, like the paper's layer groups)."""
        if text == "none":
            return cls(())
        if text == "all":
            return cls(((0, num_layers),))
        groups = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            try:
                a, _, b = part.partition("-")
                start, end = int(a), int(b or a) + 1
            except ValueError:
                raise C2CError(f"bad layer group {part!r}: use START-END (inclusive), e.g. 0-3") from None
            groups.append((start, end))
        return cls.of(groups, num_layers)

    @classmethod
    def of(cls, groups: list[tuple[int, int]], num_layers: int) -> "RecomputePlan":
        """Validate and normalise: sorted, in range, non-empty, and touching groups merged."""
        merged: list[tuple[int, int]] = []
        for start, end in sorted(groups):
            if not 0 <= start < end <= num_layers:
                raise C2CError(f"layer group {start}-{end - 1} is outside 0-{num_layers - 1}")
            if merged and start < merged[-1][1]:
                raise C2CError(f"layer groups overlap at layer {start}")
            if merged and start == merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return cls(tuple(merged))

    @property
    def layers(self) -> list[int]:
        return [i for s, e in self.groups for i in range(s, e)]

    def __str__(self) -> str:
        return ",".join(f"{s}-{e - 1}" for s, e in self.groups) or "none"


GroupKV = dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]]


@torch.no_grad()
def build_cache(b: LoadedModel, cap: Capture, plan: RecomputePlan, memo: GroupKV | None = None) -> Cache:
    """B's cache over the capture's prompts (all tokens but the last), per `plan`.

    A group's KV depends only on A's E-cache at its first layer and B's weights, so a caller trying many plans
    over one capture (the greedy search) can pass `memo` to compute each group once."""
    if ModelGeometry.from_config(b.model.config).to_dict() != cap.geometry:
        raise C2CError(f"capture from {cap.model} does not fit {b.name}: different cache shapes")
    n = len(cap.keys)
    ids, mask = cap.ids[:, :-1].to(b.device), cap.mask[:, :-1].to(b.device)
    recomputed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for start, end in plan.groups:
        kv = memo.get((start, end)) if memo is not None else None
        if kv is None:
            scratch = new_cache(b.model.config, keep_full_history=True)
            hidden = None if start == 0 else cap.hidden[start].to(b.device, b.model.dtype)
            only_layers(b.model, start, end, hidden)(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                                                      past_key_values=scratch, use_cache=True)  # fmt: skip
            kv = [(scratch.layers[i].keys, scratch.layers[i].values) for i in range(start, end)]
            if memo is not None:
                memo[(start, end)] = kv
        recomputed.update(zip(range(start, end), kv))
    cache = new_cache(b.model.config)
    dtype = b.model.dtype
    for i in range(n):
        k, v = recomputed.get(i) or (cap.keys[i].to(b.device, dtype), cap.values[i].to(b.device, dtype))
        cache.layers[i].update(k, v)  # sliding-window layers keep their last window - 1 positions, as in a prefill
    return cache


@torch.no_grad()
def generate_with_reuse(b: LoadedModel, cap: Capture, plan: RecomputePlan, options: GenerateOptions) -> dict:
    """B answers the captured prompts from the reused cache; returns texts and the cache-building time."""
    t0 = clock(b.device)
    cache = build_cache(b, cap, plan)
    t1 = clock(b.device)
    eos = b.model.generation_config.eos_token_id
    out = b.model.generate(input_ids=cap.ids.to(b.device), attention_mask=cap.mask.to(b.device),
                           past_key_values=cache, max_new_tokens=options.max_new_tokens, do_sample=False,
                           pad_token_id=b.tokenizer.pad_token_id, eos_token_id=eos)  # fmt: skip
    t2 = clock(b.device)
    texts = b.tokenizer.batch_decode(out[:, cap.ids.shape[1]:], skip_special_tokens=True)
    return {"texts": texts, "prefill_s": t1 - t0, "decode_s": t2 - t1, "plan": str(plan)}


@torch.no_grad()
def first_token_logits(b: LoadedModel, cap: Capture, cache: Cache) -> torch.Tensor:
    """(B, V) float32 logits of B's first answer token, read from a cache built over the capture's prompts."""
    ids, mask = cap.ids.to(b.device), cap.mask.to(b.device)
    out = b.model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions(mask)[:, -1:],
                  past_key_values=cache)  # fmt: skip
    return out.logits[:, -1].float()


def next_token_logits(b: LoadedModel, cap: Capture, plan: RecomputePlan, memo: GroupKV | None = None) -> torch.Tensor:
    """B's first-token logits with the cache `plan` builds (what profiling compares)."""
    return first_token_logits(b, cap, build_cache(b, cap, plan, memo))
