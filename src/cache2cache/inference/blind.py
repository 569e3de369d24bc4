"""Blind messages: the receiver answers from its cache of a brief it never read, written by translators.

Per row, the sharers read the prompt's brief (never the question after it) and their translators write the
receiver's cache of everything up to the brief's end (translation/reading.py); the receiver reads the rest of
its prompt itself. Written heads are kept in the prefix store (apart from the receiver's own caches; a private
bounded store when the model has none) and reused by every later question about the same brief. A batch is
two left-padded blocks: [written head | what the receiver reads]. Positions come from the attention mask, so
the padding between the blocks is invisible to the model.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import Cache

from ..alignment.tokens import encode, render
from ..caches.batched import stack_caches
from ..caches.identity import identity_of
from ..caches.prompt_cache import PromptCache
from ..caches.store import PrefixStore
from ..errors import C2CError
from ..kv import new_cache
from ..models.loading import LoadedModel
from ..translation.features import BriefSpan
from ..translation.reading import translate_parts
from ..translation.recompute import Recompute
from ..translation.translator import Translator
from .batching import Batch, BlindMessage, Briefed, Prompt, check_length, left_pad, to_messages

HEADS_BYTES = 1 << 30  # written heads kept when the model has no prefix store


class BlindHeads:
    """The receiver's heads of blind messages: written by the translators from their sharers' readings, kept in a
    store under the translators' fingerprints, and laid out as the head block of a batch."""

    def __init__(self, receiver: LoadedModel, sharers: Sequence[LoadedModel], translators: Sequence[Translator],
                 chat: bool, store: PrefixStore | None, recompute: Recompute = Recompute()) -> None:  # fmt: skip
        self.receiver, self.sharers, self.translators, self.chat = receiver, list(sharers), list(translators), chat
        recompute.check(receiver, self.translators)
        self.recompute = recompute  # the layers of a brief the receiver computes itself (translation/recompute.py)
        self.shared = store  # the model's prefix store: the sharers' readings go there too
        self.store = store if store is not None else PrefixStore(HEADS_BYTES)  # where written heads are kept
        self._fingerprints: dict[int, str] = {}  # per translator, its weights' hash (hashed on first use)

    def encode(self, prompts: Sequence[Prompt], new_tokens: int) -> Batch:
        """[head | tail] rows: the head is written from the brief, the tail (the question) the receiver reads."""
        heads, tails, blind = [], [], []
        tok = self.receiver.tokenizer
        for p in prompts:
            messages = to_messages(p)
            if isinstance(p, Briefed) and p.brief.strip():
                span = BriefSpan.of(self.receiver, messages, p.brief, self.chat)
                heads.append(span.ids[:span.end])
                tails.append(span.ids[span.end:])
                blind.append(BlindMessage(messages, p.brief, p.parts))
            else:
                heads.append([])
                tails.append(encode(tok, render(tok, messages, self.chat))[0])
                blind.append(None)
            check_length(self.receiver, len(heads[-1]) + len(tails[-1]), new_tokens)
        if not all(tails):
            raise C2CError("a translated prompt needs text after its brief (the question)")
        width = max(map(len, heads))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        head_ids = torch.tensor([[pad] * (width - len(h)) + h for h in heads], dtype=torch.long).view(len(heads), width)
        head_mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads]).view(len(heads), width)
        tail_ids, tail_mask, _ = left_pad(tails, pad, self.receiver.device)
        device = self.receiver.device
        return Batch(torch.cat([head_ids.to(device), tail_ids], 1), torch.cat([head_mask.to(device), tail_mask], 1),
                     [], blind, width)  # fmt: skip

    def space(self, senders: int = 1) -> str:
        """The store namespace of heads written by the first `senders` translators: named by their fingerprints,
        apart from the receiver's own caches of the same tokens (a host that imports written heads files them
        here, see serving/transfer.py)."""
        return "+translated:" + ",".join(self.fingerprint(j) for j in range(senders)) + self.recompute.space()

    def fingerprint(self, j: int = 0) -> str:
        if j not in self._fingerprints:  # tens of milliseconds per translator
            self._fingerprints[j] = self.translators[j].fingerprint()
        return self._fingerprints[j]

    def head(self, messages: list[dict], brief: str, parts: Sequence[str] = ()) -> PromptCache:
        """The receiver's cache of `messages` with `brief` up to the brief's end, translated from the first
        sharer's reading (with `parts`, several senders' documents: part j from sharer j, see
        `translate_parts`): from the store when this exact head was translated before (a follow-up question
        about the same brief, or the control's other question, costs only the receiver's reading of it)."""
        senders = max(1, len(parts))
        if senders > len(self.translators):
            raise C2CError(f"a brief of {senders} parts needs a translator per part; this model has "
                           f"{len(self.translators)}")  # fmt: skip
        ids, hit = self.stored(messages, brief, senders)
        if hit is not None:
            return hit
        skeletons = [s.name for s in self.sharers[:senders] if s.is_skeleton]
        if skeletons:
            raise C2CError(f"{', '.join(skeletons)} has no weights here: its translated brief must be imported or "
                           "fetched from the host that has them")  # fmt: skip
        pairs = list(zip(self.translators, self.sharers))[:senders]
        cache = translate_parts(pairs, self.receiver, messages, list(parts) or [brief], self.chat, self.shared,
                                self.recompute)[0]  # fmt: skip
        if cache.token_ids != ids:
            raise C2CError("the brief's parts do not join to the brief")
        cache.meta["translator"] = ",".join(self.fingerprint(j) for j in range(senders))
        self.store.put(cache, self.space(senders))
        return cache

    def stored(self, messages: list[dict], brief: str, senders: int = 1) -> tuple[list[int], PromptCache | None]:
        """The receiver's token ids of `messages` with `brief` up to the brief's end, and the translated head of
        exactly those tokens by the first `senders` translators if one is stored (translated here before, or
        fetched or imported from a host that has the sharers)."""
        span = BriefSpan.of(self.receiver, messages, brief, self.chat)
        if span.end > self.receiver.max_length:
            raise C2CError(f"the brief's {span.end} tokens exceed {self.receiver.name}'s context of "
                           f"{self.receiver.max_length}")  # fmt: skip
        ids = span.ids[:span.end]
        return ids, self.store.get(identity_of(self.receiver).fingerprint, ids, self.space(senders))

    @torch.no_grad()
    def cache(self, batch: Batch) -> Cache:
        """The batch's head block as one left-padded cache: each row's written head (empty without a brief)."""
        receiver = self.receiver
        head_len = [int(m.sum()) for m in batch.mask[:, :batch.head]]
        heads = [batch.ids[b, batch.head - n:batch.head].tolist() for b, n in enumerate(head_len)]
        caches = [self.head(row.messages, row.brief, row.parts) if row is not None else PromptCache.empty(receiver)
                  for row in batch.blind]
        if [c.token_ids for c in caches] != heads:
            raise C2CError("the translated cache does not cover the brief's tokens (tokenizer not deterministic?)")
        return stack_caches(caches, receiver)[0] if batch.head else new_cache(receiver.model.config)
