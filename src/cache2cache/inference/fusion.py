"""The over-maps' step of the message path: fusers add to the positions the receiver read itself.

Fusion is per position (a position's deltas depend only on the receiver's and the aligned sharer's keys and
values there), so deltas are computed only from the first column any row still needs, and a stored fused
prefix is exactly what fusing afresh would give (prefix_reuse.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import Cache

from ..fuser.model import Fuser, LayerDeltas
from .batching import Batch


def add_fused(cache: Cache, fusers: Sequence[Fuser], sharer_caches: Sequence[Cache], batch: Batch,
              fresh: torch.Tensor | None = None) -> None:  # fmt: skip
    """Add every fuser's deltas (all computed from the receiver's own cache) to `cache` in place, at the
    positions `fresh` (B, T) marks (default: every real prompt position but the last).

    Runs with whatever grad mode the caller has: training calls it with gradients on, after prefilling
    without them."""
    if batch.ids.shape[1] < 2:
        return  # a one-token prompt leaves nothing in the cache to fuse
    valid = batch.mask[:, :-1] if fresh is None else fresh  # (B, T)
    cols = valid.any(0).nonzero()
    if cols.numel() == 0:
        return  # everything was fused before (a prefix-store hit on the whole prompt)
    n_new = valid.shape[1] - int(cols[0])
    receiver_kv = [(layer.keys[:, :, -n_new:], layer.values[:, :, -n_new:]) for layer in cache.layers]
    per_fuser: list[LayerDeltas] = [
        fuser(receiver_kv, [(sl.keys, sl.values) for sl in s_cache.layers], index[:, :-1])
        for fuser, s_cache, (_, _, index) in zip(fusers, sharer_caches, batch.sharers)
    ]
    valid = valid[:, None, :, None]  # (B, 1, T, 1): padding (and already fused) positions stay untouched
    for r in sorted({r for d in per_fuser for r in d}):
        layer = cache.layers[r]
        t = min(layer.keys.shape[-2], n_new)
        dk = sum(d[r][0] for d in per_fuser if r in d and d[r][0] is not None)
        dv = sum(d[r][1] for d in per_fuser if r in d and d[r][1] is not None)
        if isinstance(dk, torch.Tensor):
            layer.keys = torch.cat([layer.keys[:, :, :-t], layer.keys[:, :, -t:] + (dk * valid[:, :, -t:])
                                    .to(layer.keys.dtype)], dim=2)  # fmt: skip
        if isinstance(dv, torch.Tensor):
            layer.values = torch.cat([layer.values[:, :, :-t], layer.values[:, :, -t:] + (dv * valid[:, :, -t:])
                                      .to(layer.values.dtype)], dim=2)  # fmt: skip
