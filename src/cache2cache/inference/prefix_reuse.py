"""What a `C2CModel` with a prefix store does beyond a plain prefill: every model resumes from the longest stored
prefix of its prompt, and fusion from the longest stored *fused* prefix.

Fusion is per position (a position's deltas depend only on the receiver's and the aligned sharer's keys and
values there), so a stored fused prefix is exactly what fusing afresh would compute, as long as the sharer read
the same tokens up to the aligned positions; `_reuse_fused` checks that per position, because a sharer may
tokenise the boundary of a shared prefix differently (a merge across it).
"""

from __future__ import annotations

import hashlib

import torch
from transformers import Cache

from ..adapter_dir import hash_tensors
from ..caches.batched import stack_caches
from ..caches.identity import ModelIdentity, identity_of
from ..caches.prompt_cache import PromptCache
from ..caches.store import PrefixStore, common_prefix
from ..models.loading import LoadedModel
from .batching import Batch


def rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """The real (unpadded) token ids of each row of a left-padded batch."""
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


class FusedPrefixes:
    """A C2CModel's prefix store: every model's reading resumes from it, and fusion from its fused prefixes."""

    def __init__(self, store: PrefixStore, receiver: LoadedModel, sharers: list[LoadedModel], fusers: list) -> None:
        self.store, self.receiver, self.sharers, self.fusers = store, receiver, sharers, fusers
        self._pair_identity: ModelIdentity | None = None

    def prefill(self, model: LoadedModel, token_rows: list[list[int]]) -> Cache:
        """`model`'s batched cache of these rows, each from its longest stored prefix on."""
        caches = [self.store.prefill(model, r) for r in token_rows]
        return stack_caches(caches, model)[0]  # left-padded exactly like the batch: same rows, same widths

    def pair_identity(self) -> ModelIdentity:
        """Identity of the fused receiver cache: the receiver, each sharer and each fuser's weights."""
        if self._pair_identity is None:
            r = identity_of(self.receiver)
            h = hashlib.sha256(r.fingerprint.encode())
            for sharer, fuser in zip(self.sharers, self.fusers):
                h.update(identity_of(sharer).fingerprint.encode())
                hash_tensors(h, fuser.state_dict())
            name = f"{r.name}<-{'+'.join(s.name for s in self.sharers)}"
            self._pair_identity = ModelIdentity(name, h.hexdigest()[:16], r.geometry)
        return self._pair_identity

    def alignment_rows(self, batch: Batch) -> list[list[tuple[list[int], list[int]]]]:
        """Per prompt, per sharer: its unpadded sharer ids and each receiver position's sharer index."""
        pads = (batch.mask == 0).sum(-1).tolist()
        out = []
        for b in range(batch.ids.shape[0]):
            row = []
            for s_ids, s_mask, index in batch.sharers:
                s_pad = int((s_mask[b] == 0).sum())
                row.append((s_ids[b, s_pad:].tolist(), (index[b, pads[b]:-1] - s_pad).tolist()))
            out.append(row)
        return out

    def reuse(self, cache: Cache, batch: Batch, aligned_rows: list) -> torch.Tensor:
        """Copy each row's longest stored fused prefix into `cache`; returns the (B, T) mask of positions still to
        fuse. A stored position is reused only where it was fused from the same sharer tokens: near the end of
        a shared prefix a sharer may have tokenised the boundary differently (a merge across it)."""
        mask = batch.mask[:, :-1]
        fresh = mask.clone()
        pads = (mask == 0).sum(-1).tolist()
        for b, (row, aligned) in enumerate(zip(rows(batch.ids[:, :-1], mask), aligned_rows)):
            fused = self.store.longest_prefix(self.pair_identity().fingerprint, row)
            if fused is None:
                continue
            n = len(fused)
            for (ids, index), old in zip(aligned, fused.meta["aligned"]):
                same = common_prefix(ids, old["ids"])  # sharer tokens both prompts share
                n = min(n, next((i for i in range(n) if index[i] >= same or index[i] != old["index"][i]), n))
            start = pads[b]
            for layer, k, v in zip(cache.layers, fused.keys, fused.values):
                layer.keys[b, :, start:start + n] = k[:, :n].to(layer.keys.dtype)
                layer.values[b, :, start:start + n] = v[:, :n].to(layer.values.dtype)
            fresh[b, start:start + n] = 0
        return fresh

    def put(self, cache: Cache, batch: Batch, aligned_rows: list) -> None:
        mask = batch.mask[:, :-1]
        pads = (mask == 0).sum(-1).tolist()
        for b, (row, aligned) in enumerate(zip(rows(batch.ids[:, :-1], mask), aligned_rows)):
            keys = [layer.keys[b, :, pads[b]:].clone() for layer in cache.layers]
            values = [layer.values[b, :, pads[b]:].clone() for layer in cache.layers]
            meta = {"aligned": [{"ids": ids, "index": index} for ids, index in aligned]}
            self.store.put(PromptCache(self.pair_identity(), row, keys, values, meta=meta))

