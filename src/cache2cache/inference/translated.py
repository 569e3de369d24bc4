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
from ..translation.reading import translate_parts
from .batching import Batch, Briefed, Prompt, Timings, clock, left_pad, positions, to_messages

TRANSLATED_HEADS_BYTES = 1 << 30  # translated briefs kept when the model has no prefix store


class TranslatedReading:
    """Mixed into C2CModel (which provides receiver, sharers, translators, chat, store, _check_length)."""

    translated_heads: PrefixStore  # where translated briefs are kept when there is no prefix store
    translator_fingerprints: dict[int, str]  # per translator, its weights' hash (translator_fingerprint)

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
                briefs.append((messages, p.brief, p.parts))
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

    def translated_space(self, senders: int = 1) -> str:
        """The store namespace of translated heads written by the first `senders` translators: named by their
        fingerprints, apart from the receiver's own caches of the same tokens (a host that imports translated
        heads files them here, see serving/transfer.py)."""
        return "+translated:" + ",".join(self.translator_fingerprint(j) for j in range(senders))

    def translator_fingerprint(self, j: int = 0) -> str:
        if j not in self.translator_fingerprints:  # hashed on first use: tens of milliseconds per translator
            self.translator_fingerprints[j] = self.translators[j].fingerprint()
        return self.translator_fingerprints[j]

    def translated_store(self) -> PrefixStore:
        return self.store if self.store is not None else self.translated_heads

    def translated_head(self, messages: list[dict], brief: str, parts: Sequence[str] = ()) -> PromptCache:
        """The receiver's cache of `messages` with `brief` up to the brief's end, translated from the first
        sharer's reading (with `parts`, several senders' documents: part j from sharer j, see
        `translate_parts`): from the store when this exact head was translated before (a follow-up question
        about the same brief, or the control's other question, costs only the receiver's reading of it)."""
        senders = max(1, len(parts))
        if senders > len(self.translators):
            raise C2CError(f"a brief of {senders} parts needs a translator per part; this model has "
                           f"{len(self.translators)}")  # fmt: skip
        ids, hit = self.stored_head(messages, brief, senders)
        if hit is not None:
            return hit
        skeletons = [s.name for s in self.sharers[:senders] if s.is_skeleton]
        if skeletons:
            raise C2CError(f"{', '.join(skeletons)} has no weights here: its translated brief must be imported or "
                           "fetched from the host that has them")  # fmt: skip
        pairs = list(zip(self.translators, self.sharers))[:senders]
        cache = translate_parts(pairs, self.receiver, messages, list(parts) or [brief], self.chat, self.store)[0]
        if cache.token_ids != ids:
            raise C2CError("the brief's parts do not join to the brief")
        cache.meta["translator"] = ",".join(self.translator_fingerprint(j) for j in range(senders))
        self.translated_store().put(cache, self.translated_space(senders))
        return cache

    def stored_head(self, messages: list[dict], brief: str, senders: int = 1) -> tuple[list[int], PromptCache | None]:
        """The receiver's token ids of `messages` with `brief` up to the brief's end, and the translated head of
        exactly those tokens by the first `senders` translators if one is stored (translated here before, or
        fetched or imported from a host that has the sharers)."""
        span = BriefSpan.of(self.receiver, messages, brief, self.chat)
        if span.end > self.receiver.max_length:
            raise C2CError(f"the brief's {span.end} tokens exceed {self.receiver.name}'s context of "
                           f"{self.receiver.max_length}")  # fmt: skip
        ids = span.ids[:span.end]
        return ids, self.translated_store().get(identity_of(self.receiver).fingerprint, ids,
                                                self.translated_space(senders))  # fmt: skip

    @torch.no_grad()
    def prefill_translated(self, batch: Batch) -> tuple[Cache, Timings]:
        """Translate each row's brief (timed as the sharer's prefill), then let the receiver read the tails but
        their last tokens (timed as its prefill)."""
        receiver = self.receiver
        timings = Timings()
        t0 = clock(receiver.device)
        head_len = [int(m.sum()) for m in batch.mask[:, :batch.head]]
        heads = [batch.ids[b, batch.head - n:batch.head].tolist() for b, n in enumerate(head_len)]
        caches = [self.translated_head(*row) if row is not None else PromptCache.empty(receiver)
                  for row in batch.briefs]
        if [c.token_ids for c in caches] != heads:
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
