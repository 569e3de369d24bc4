"""Mode "translated" of `C2CModel`: the receiver answers from the translated cache of a brief it never read.

Per row, the first sharer reads the prompt's brief (never the question after it) and its translator writes the
receiver's cache of everything up to the brief's end (translation/reading.py); the receiver reads the rest of
its prompt itself. Translated heads are kept in the prefix store (apart from the receiver's own caches; a
private bounded store when the model has none) and reused by every later question about the same brief.
A batch is two left-padded blocks: [translated head | tail the receiver reads]. Positions
come from the attention mask, so the padding between the blocks is invisible to the model.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import Cache

from ..alignment.tokens import encode, render
from ..caches.identity import identity_of
from ..caches.prompt_cache import PromptCache, stack_caches
from ..caches.store import PrefixStore
from ..errors import C2CError
from ..kv import new_cache
from ..translation.features import BriefSpan
from ..translation.reading import translate_brief
from .batching import Batch, Briefed, Prompt, Timings, clock, left_pad, positions, to_messages

TRANSLATED_HEADS_BYTES = 1 << 30  # translated briefs kept when the model has no prefix store


class TranslatedReading:
    """Mixed into C2CModel (which provides receiver, sharers, translators, chat, store, _check_length)."""

    translated_heads: PrefixStore  # where translated briefs are kept when there is no prefix store

    def encode_translated(self, prompts: Sequence[Prompt], new_tokens: int) -> Batch:
        if not self.translators:
            raise C2CError("mode 'translated' needs a translator for the first sharer (--translator; fit one with "
                           "`c2c fit`)")  # fmt: skip
        heads, tails, briefs = [], [], []
        tok = self.receiver.tokenizer
        for p in prompts:
            messages = to_messages(p)
            if isinstance(p, Briefed) and p.brief.strip():
                span = BriefSpan.of(self.receiver, messages, p.brief, self.chat)
                heads.append(span.ids[:span.end])
                tails.append(span.ids[span.end:])
                briefs.append((messages, p.brief))
            else:
                heads.append([])
                tails.append(encode(tok, render(tok, messages, self.chat))[0])
                briefs.append(None)
            self._check_length(self.receiver, len(heads[-1]) + len(tails[-1]), new_tokens)
        if not all(tails):
            raise C2CError("a translated prompt needs text after its brief (the question)")
        width = max(map(len, heads))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        head_ids = torch.tensor([[pad] * (width - len(h)) + h for h in heads], dtype=torch.long).view(len(heads), width)
        head_mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads]).view(len(heads), width)
        tail_ids, tail_mask, _ = left_pad(tails, pad, self.receiver.device)
        device = self.receiver.device
        return Batch(torch.cat([head_ids.to(device), tail_ids], 1), torch.cat([head_mask.to(device), tail_mask], 1),
                     [], briefs, width)  # fmt: skip

    def _translated(self, row: tuple, ids: list[int]) -> PromptCache:
        """A row's translated head: from the store when this exact head was translated before (a follow-up
        question about the same brief, or the control's other question, costs only the receiver's reading of
        the question). The store is the model's prefix store, else a private bounded one."""
        store = self.store if self.store is not None else self.translated_heads
        space = f"+translated:{self.translators[0].config.sharer_fingerprint}:{id(self.translators[0])}"
        hit = store.get(identity_of(self.receiver).fingerprint, ids, space)
        if hit is not None:
            return hit
        cache = translate_brief(self.translators[0], self.receiver, self.sharers[0], *row, chat=self.chat,
                                store=self.store)[0]  # fmt: skip
        store.put(cache, space)
        return cache

    @torch.no_grad()
    def prefill_translated(self, batch: Batch) -> tuple[Cache, Timings]:
        """Translate each row's brief (timed as the sharer's prefill), then let the receiver read the tails but
        their last tokens (timed as its prefill)."""
        receiver = self.receiver
        timings = Timings()
        t0 = clock(receiver.device)
        head_len = [int(m.sum()) for m in batch.mask[:, :batch.head]]
        heads = [batch.ids[b, batch.head - n:batch.head].tolist() for b, n in enumerate(head_len)]
        caches = [self._translated(row, ids) if row is not None else PromptCache.empty(receiver)
                  for row, ids in zip(batch.briefs, heads)]  # fmt: skip
        if [len(c) for c in caches] != head_len:
            raise C2CError("the translated cache does not cover the brief's tokens (tokenizer not deterministic?)")
        cache = stack_caches(caches, receiver)[0] if batch.head else new_cache(receiver.model.config)
        t1 = clock(receiver.device)
        if batch.ids.shape[1] - batch.head > 1:
            mask = batch.mask[:, :-1]
            receiver.model(input_ids=batch.ids[:, batch.head:-1], attention_mask=mask,
                           position_ids=positions(mask)[:, batch.head:], past_key_values=cache, use_cache=True,
                           logits_to_keep=1)  # fmt: skip
        timings.sharer_prefill_s, timings.receiver_prefill_s = t1 - t0, clock(receiver.device) - t1
        return cache, timings
