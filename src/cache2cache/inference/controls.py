"""The mismatched-sharer control: fuse each prompt with the sharer's cache of *another* prompt.

If C2C's gain over the receiver is the sharer's knowledge of this prompt, fusing another prompt's sharer cache
must lose it; if the gain survives, the fuser has learned a prior it adds whatever the sharer read. Evaluation
uses this to test a fuser (`c2c eval --modes c2c,mismatched`), training to penalise such priors
(`mismatch_loss_weight`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import Cache

from ..errors import C2CError
from .batching import Batch


def rotate_sharers(batch: Batch, sharer_caches: Sequence[Cache]) -> Batch:
    """Give row b the sharer rows of row b+1 (mod B): the caches are reordered in place and the returned batch's
    token index maps each receiver position to the same *relative* place in the other row's sharer prompt."""
    b = batch.ids.shape[0]
    if b < 2:
        raise C2CError("the mismatched-sharer control needs at least two prompts in a batch")
    perm = torch.tensor([(i + 1) % b for i in range(b)], device=batch.ids.device)
    sharers = []
    for cache, (s_ids, s_mask, index) in zip(sharer_caches, batch.sharers):
        lens, pads = s_mask.sum(-1), (s_mask == 0).sum(-1)
        rel = (index - pads[:, None]).clamp(min=0).float() / (lens[:, None] - 1).clamp(min=1)
        stretched = pads[perm, None] + (rel * (lens[perm, None] - 1)).round().long()
        cache.batch_select_indices(perm)
        sharers.append((s_ids[perm], s_mask[perm], stretched.clamp(max=s_ids.shape[1] - 1)))
    return Batch(batch.ids, batch.mask, sharers)
