"""Single-sequence caches (`PromptCache`s, or anything with per-layer `keys`/`values` and a length) as one
left-padded batched transformers cache: how stored prefixes and written heads join a batch."""

from __future__ import annotations

import torch

from ..errors import C2CError
from ..kv import new_cache
from ..models.loading import LoadedModel


def stack_caches(caches: list, model: LoadedModel) -> tuple[object, torch.Tensor]:
    """Left-pad single caches into one batched DynamicCache for `model`, with its (B, T) attention mask. Padded
    positions hold zeros and are masked out; positions come from the mask, as everywhere in the pipeline."""
    if not caches:
        raise C2CError("no caches to stack")
    width = max(len(c) for c in caches)
    device = model.device
    mask = torch.zeros(len(caches), width, dtype=torch.long, device=device)
    for b, c in enumerate(caches):
        mask[b, width - len(c):] = 1
    cache = new_cache(model.model.config, keep_full_history=True)
    for i, layer in enumerate(cache.layers):
        k = left_pad_stack([c.keys[i].to(device) for c in caches], width)
        v = left_pad_stack([c.values[i].to(device) for c in caches], width)
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = width
    return cache, mask


def left_pad_stack(tensors: list[torch.Tensor], width: int) -> torch.Tensor:
    """Stack per-sequence tensors (..., T, D) into (B, ..., width, D), zero-padded on the left of T."""
    return torch.stack([torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0)) for t in tensors])
