"""C2CModel: a receiver, its sharers and their cache maps, and the one path a message takes into the receiver.

Every mode goes the same way (modes.py says which maps carry the message):

    encode    tokenise, align, left-pad: [head | what the answering model reads] (batching.Batch)
    prefill   the blind maps (translators) write the head; the sharers read their prompts; the answering model
              reads everything but the last token over the head; the over maps (fusers) add to what it read
    decode    transformers' `generate()` continues from that cache (or scoring.py reads scores off it)

The receiver prefills every prompt token but the last (C2C paper, Sec. 3.1); generation feeds the last token and
decodes with the model's own Cache classes, masks, sampling and streamers. Batches are left-padded; positions
come from the attention mask, so a padded row computes the same thing it would alone. Mode "receiver" uses no
map; mode "sharer" lets the first sharer answer alone with its own chat template.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from transformers import Cache

from ..alignment.tokens import AlignedPrompt, TokenAligner
from ..caches.identity import ModelIdentity, known_identity, pin_identity
from ..caches.store import PrefixStore
from ..errors import C2CError
from ..fuser.model import Fuser
from ..kv import ModelGeometry, new_cache
from ..maps import CacheMap, check_map
from ..models.loading import LoadedModel
from ..translation.recompute import Recompute
from ..translation.translator import Translator
from .batching import (
    Batch,
    GenerateOptions,
    GenerationOutput,
    Prompt,
    Timings,
    aligned_batch,
    check_length,
    clock,
    plain_batch,
    positions,
    sharer_messages,
    to_messages,
)
from .blind import BlindHeads
from .controls import rotate_sharers
from .decoding import generation_config, results, stream
from .fusion import add_fused
from .modes import PIPELINE_MODES, get_mode
from .prefix_reuse import FusedPrefixes, rows
from .scoring import last_logits, option_rows, score_options


class C2CModel:
    """A receiver, zero or more sharers with their cache maps (a fuser each, a translator each, or both), and
    the code that makes them talk.

    Holds no global state: several instances (say, one per model pair in a server) can live side by side. With
    a `PrefixStore`, prompts that share a prefix with an earlier one (a document, a conversation so far) are
    prefilled and fused from the stored prefix on (prefix_reuse.py); written heads of briefs are kept there too
    (blind.py).
    """

    def __init__(self, receiver: LoadedModel, sharers: Sequence[LoadedModel] = (), fusers: Sequence[Fuser] = (),
                 chat: bool = True, store: PrefixStore | None = None, translators: Sequence[Translator] = (),
                 recompute: Recompute = Recompute()) -> None:  # fmt: skip
        if (fusers and len(fusers) != len(sharers)) or (sharers and not fusers and not translators):
            raise C2CError(f"need one fuser per sharer: got {len(sharers)} sharer(s) and {len(fusers)} fuser(s)")
        if len(translators) > len(sharers):
            raise C2CError(f"at most one translator per sharer: got {len(sharers)} sharer(s), {len(translators)}")
        self.receiver, self.sharers, self.chat = receiver, list(sharers), chat
        self.maps: dict[str, list[CacheMap]] = {"fusers": list(fusers), "translators": list(translators)}
        for kind in self.maps.values():
            for sharer, cmap in zip(self.sharers, kind):
                if known_identity(sharer) is None and cmap.config.sharer_fingerprint:
                    # a sharer without weights here: it is the checkpoint its map was made with
                    pin_identity(sharer, ModelIdentity(sharer.name, cmap.config.sharer_fingerprint,
                                                       ModelGeometry.from_config(sharer.model.config)))  # fmt: skip
        for kind, hash_sharer in (("translators", True), ("fusers", False)):
            for sharer, cmap in zip(self.sharers, self.maps[kind]):
                check_map(cmap, receiver, sharer, hash_sharer)
                cmap.to(receiver.device).eval()
        self.aligners = [TokenAligner(receiver.tokenizer, s.tokenizer, f.config.token_alignment)
                         for s, f in zip(self.sharers, self.fusers)]  # fmt: skip
        self.recompute = recompute  # translated briefs: the layers the receiver computes itself (blind.BlindHeads)
        self.store = store
        self._fusion_enabled = True
        self._mismatched = False

    @property
    def store(self) -> PrefixStore | None:
        return self._store

    @store.setter
    def store(self, store: PrefixStore | None) -> None:
        """Where prefixes, fused prefixes and written heads are kept (a server sets one after construction)."""
        self._store = store
        self.heads = BlindHeads(self.receiver, self.sharers, self.translators, self.chat, store, self.recompute)
        self.prefixes = FusedPrefixes(store, self.receiver, self.sharers, self.fusers) if store is not None else None

    fusers = property(lambda self: self.maps["fusers"], doc="the sharers' fusers, in order")
    translators = property(lambda self: self.maps["translators"], doc="the sharers' translators, in order")

    def answerer(self, mode: str) -> LoadedModel:
        """The model that answers in `mode`: the first sharer in mode "sharer", else the receiver."""
        return self.sharers[0] if mode == "sharer" else self.receiver

    def disable_fuser(self) -> contextlib.AbstractContextManager:
        """Within this block, mode "c2c" still prefills the sharers but adds nothing to the receiver's cache."""
        return self._while("_fusion_enabled", False)

    def mismatched_sharers(self) -> contextlib.AbstractContextManager:
        """Within this block, mode "c2c" fuses each prompt with the sharers' caches of the *next* prompt of its
        batch (the control of inference/controls.py: what a fuser adds whatever the sharer read)."""
        return self._while("_mismatched", True)

    @contextlib.contextmanager
    def _while(self, flag: str, value: bool) -> Iterator[None]:
        old = getattr(self, flag)
        setattr(self, flag, value)
        try:
            yield
        finally:
            setattr(self, flag, old)

    def maps_for(self, mode: str) -> list[CacheMap]:
        """The maps that carry the message in pipeline `mode`; a one-line error when this model lacks them."""
        route = get_mode(mode, PIPELINE_MODES)
        if route.sharer and not self.sharers:
            raise C2CError(f"mode {mode!r} needs at least one sharer")
        maps = self.maps.get(route.maps, [])
        if route.maps == "fusers" and len(maps) != len(self.sharers):
            raise C2CError(f"mode {mode!r} needs a fuser per sharer (this model has translators only)")
        if route.maps == "translators" and not maps:
            raise C2CError(f"mode {mode!r} needs a translator for the first sharer (--translator; fit one with "
                           "`c2c fit`)")  # fmt: skip
        return maps

    # ---- encode -----------------------------------------------------------------------------------------

    def encode(self, prompts: Sequence[Prompt], mode: str = "c2c", new_tokens: int = 0) -> Batch:
        """Tokenise, align and left-pad. Raises C2CError for empty prompts, and for prompts that leave no room
        for `new_tokens` in the answering model's context."""
        maps = self.maps_for(mode)
        if not prompts:
            raise C2CError("no prompts given")
        if any(m.writes_unread for m in maps):  # the message lands where the receiver reads nothing
            return self.heads.encode(prompts, new_tokens)
        messages = [(sharer_messages if mode == "sharer" else to_messages)(p) for p in prompts]
        answerer = self.answerer(mode)
        if not maps:
            return plain_batch(answerer, messages, self.chat, new_tokens)
        sharer_views = [sharer_messages(p) for p in prompts]
        aligned: list[list[AlignedPrompt]] = [[al.align(m, self.chat, s) for m, s in zip(messages, sharer_views)]
                                              for al in self.aligners]  # fmt: skip
        for r in aligned[0]:
            check_length(self.receiver, len(r.receiver_ids), new_tokens)
        for sharer, views in zip(self.sharers, aligned):
            for a in views:
                check_length(sharer, len(a.sharer_ids), new_tokens=0)
        return aligned_batch(self.receiver, self.sharers, aligned)

    # ---- prefill: the message path ----------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, batch: Batch, mode: str = "c2c") -> tuple[Cache, Timings]:
        """Prefill all prompt tokens but the last, with the message in: the head written (timed as the
        sharers' prefill, with their reading), the rest read by the answering model over it, the fusers'
        deltas added. With a prefix store, every model resumes from the longest cached prefix of its prompt,
        and fusion from the longest fused prefix (fusion is per position, so a prefix's fused keys and values
        do not change)."""
        over = [m for m in self.maps_for(mode) if not m.writes_unread]
        answerer = self.answerer(mode)
        fusing = bool(over) and self._fusion_enabled
        timings = Timings()
        t0 = clock(answerer.device)
        head = self.heads.cache(batch) if batch.head else None
        sharer_caches = self.prefill_sharers(batch) if over else []
        fusion_batch = rotate_sharers(batch, sharer_caches) if fusing and self._mismatched else batch
        t1 = clock(answerer.device)
        cache = self.prefill_answerer(batch, answerer, head)
        reusing = fusing and self.prefixes is not None and not self._mismatched
        aligned_rows = self.prefixes.alignment_rows(batch) if reusing else []  # once, for lookup and store
        fresh = self.prefixes.reuse(cache, batch, aligned_rows) if reusing else None
        t2 = clock(answerer.device)
        if fusing:
            self.fuse(cache, sharer_caches, fusion_batch, fresh)
            if reusing:
                self.prefixes.put(cache, batch, aligned_rows)
        t3 = clock(answerer.device)
        timings.sharer_prefill_s, timings.receiver_prefill_s, timings.fuse_s = t1 - t0, t2 - t1, t3 - t2
        return cache, timings

    def prefill_sharers(self, batch: Batch) -> list[Cache]:
        """Each sharer reads its whole prompt; its cache keeps every position (sliding layers included)."""
        caches = []
        for sharer, (s_ids, s_mask, _) in zip(self.sharers, batch.sharers):
            if self.prefixes is not None:
                caches.append(self.prefixes.prefill(sharer, rows(s_ids, s_mask)))
                continue
            cache = new_cache(sharer.model.config, keep_full_history=True)
            sharer.model(input_ids=s_ids, attention_mask=s_mask, position_ids=positions(s_mask),
                         past_key_values=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
            caches.append(cache)
        return caches

    def prefill_answerer(self, batch: Batch, answerer: LoadedModel, head: Cache | None = None) -> Cache:
        """The answering model reads every prompt token after the head but the last (which generation or
        training feeds), over the `head` cache when there is one."""
        if head is None and self.prefixes is not None and batch.ids.shape[1] > 1:
            return self.prefixes.prefill(answerer, rows(batch.ids[:, :-1], batch.mask[:, :-1]))
        cache = head if head is not None else new_cache(answerer.model.config)
        if batch.ids.shape[1] - batch.head > 1:
            mask = batch.mask[:, :-1]
            answerer.model(input_ids=batch.ids[:, batch.head:-1], attention_mask=mask,
                           position_ids=positions(mask)[:, batch.head:], past_key_values=cache, use_cache=True,
                           logits_to_keep=1)  # fmt: skip
        return cache

    def fuse(self, cache: Cache, sharer_caches: Sequence[Cache], batch: Batch, fresh: torch.Tensor | None = None
             ) -> None:  # fmt: skip
        """Add every fuser's deltas to `cache` in place (fusion.py), at the positions `fresh` marks."""
        add_fused(cache, self.fusers, sharer_caches, batch, fresh)

    # ---- decode -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], mode: str = "c2c", options: GenerateOptions | None = None,
                 streamer=None, stopping_criteria=None) -> GenerationOutput:  # fmt: skip
        """Answer a batch of prompts (str or chat messages) in `mode`; see the module docstring. `streamer` and
        `stopping_criteria` go to transformers' `generate()` (a server streams and cancels rows with them). A seed
        applies to this call only: the process's global random state is left as it was."""
        options = options or GenerateOptions()
        batch = self.encode(prompts, mode, options.max_new_tokens)
        cache, timings = self.prefill(batch, mode)
        answerer = self.answerer(mode)
        t0 = clock(answerer.device)
        devices = [answerer.device] if answerer.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=options.seed is not None):
            if options.seed is not None:
                torch.manual_seed(options.seed)
            out = answerer.model.generate(
                input_ids=batch.ids, attention_mask=batch.mask, past_key_values=cache,
                generation_config=generation_config(answerer, options), streamer=streamer,
                stopping_criteria=stopping_criteria,
            )  # fmt: skip
        timings.decode_s = clock(answerer.device) - t0
        return GenerationOutput(mode, results(out, batch, answerer), timings)

    @torch.no_grad()
    def next_token_logits(self, prompts: Sequence[Prompt], mode: str = "c2c") -> torch.Tensor:
        """(B, V) float32 logits for the token after each prompt, from the (fused) cache: what scoring by
        answer-letter logits reads, and the most sensitive thing to compare between modes."""
        return self.next_token_logits_timed(prompts, mode)[0]

    @torch.no_grad()
    def next_token_logits_timed(self, prompts: Sequence[Prompt], mode: str = "c2c") -> tuple[torch.Tensor, Timings]:
        """`next_token_logits` plus the phase timings (the last-token forward counts as decode)."""
        batch = self.encode(prompts, mode, new_tokens=1)
        cache, timings = self.prefill(batch, mode)
        answerer = self.answerer(mode)
        t0 = clock(answerer.device)
        logits = last_logits(batch, cache, answerer)
        timings.decode_s = clock(answerer.device) - t0
        return logits, timings

    @torch.no_grad()
    def continuation_logprobs(
        self, prompts: Sequence[Prompt], continuations: Sequence[Sequence[str]], mode: str = "c2c"
    ) -> tuple[list[list[float]], Timings]:
        """Summed log-probability of each continuation text after its prompt (cloze scoring):
        `continuations[i]` are the options for `prompts[i]`. Each prompt is prefilled (and fused) once; its
        cache is then copied for every option, so scoring k options costs one prefill, not k."""
        logps, _, timings = self.continuation_scores(prompts, continuations, mode)
        return logps, timings

    @torch.no_grad()
    def continuation_scores(
        self, prompts: Sequence[Prompt], continuations: Sequence[Sequence[str]], mode: str = "c2c"
    ) -> tuple[list[list[float]], list[list[bool]], Timings]:
        """`continuation_logprobs`, plus for each continuation whether greedy decoding would produce it (every
        token the argmax), as lm-evaluation-harness asks."""
        if len(continuations) != len(prompts) or not all(continuations):
            raise C2CError("need a non-empty list of continuations for every prompt")
        answerer = self.answerer(mode)
        rows = option_rows(answerer.tokenizer, continuations)
        batch = self.encode(prompts, mode, new_tokens=max(map(len, rows)))  # the longest option must fit too
        cache, timings = self.prefill(batch, mode)
        t0 = clock(answerer.device)
        logps, greedy = score_options(batch, cache, answerer, rows, continuations)
        timings.decode_s = clock(answerer.device) - t0
        return logps, greedy, timings

    def stream(self, prompt: Prompt, mode: str = "c2c", options: GenerateOptions | None = None) -> Iterator[str]:
        """Yield the answer to one prompt piece by piece as it is decoded."""
        yield from stream(self.answerer(mode).tokenizer, lambda streamer: self.generate([prompt], mode, options,
                                                                                      streamer=streamer))
