"""Fused generation: prefill sharer(s) and receiver, fuse the caches, decode with the receiver's `generate()`.

The receiver prefills every prompt token but the last (C2C paper, Sec. 3.1); the fused cache is then handed to
transformers' `generate()` together with the full prompt, so generation feeds the last prompt token and decodes
from there with the model's own Cache classes, masks, sampling and streamers. Batches are left-padded;
positions come from the attention mask, so a padded row computes the same thing it would alone.

The baselines run through the same code: mode "receiver" skips the sharers and fusion, mode "sharer" lets the
first sharer answer alone with its own chat template.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import torch
from transformers import Cache, GenerationConfig, TextIteratorStreamer

from ..alignment.tokens import AlignedPrompt, TokenAligner, encode, render
from ..caches.identity import ModelIdentity, identity_of, known_identity, pin_identity
from ..caches.store import PrefixStore
from ..errors import C2CError
from ..fuser.model import Fuser, LayerDeltas
from ..kv import ModelGeometry, new_cache
from ..models.loading import LoadedModel
from ..translation.reading import check_translator
from ..translation.translator import Translator
from .controls import rotate_sharers
from .batching import (MODES, Batch, Briefed, GenerateOptions, GenerationOutput, GenerationResult, Prompt, Timings,
                       clock, left_pad, positions, right_pad, sharer_messages, to_messages)
from .prefix_reuse import PrefixReuse
from .prefix_reuse import rows as _rows
from .translated import TRANSLATED_HEADS_BYTES, TranslatedReading

__all__ = ["C2CModel", "MODES", "Batch", "Briefed", "GenerateOptions", "GenerationOutput", "GenerationResult", "Prompt", "clock",
           "Timings", "left_pad", "positions", "right_pad", "sharer_messages", "to_messages"]

class C2CModel(PrefixReuse, TranslatedReading):
    """A receiver, zero or more sharers with one fuser each, and the code that makes them talk.

    Holds no global state: several instances (say, one per model pair in a server) can live side by side. With
    a `PrefixStore`, prompts that share a prefix with an earlier one (a document, a conversation so far) are
    prefilled and fused from the stored prefix on (see `prefill`). With a translator for the first sharer, mode
    "translated" answers briefed prompts from the translated cache of the brief (translated.py).
    """

    def __init__(
        self,
        receiver: LoadedModel,
        sharers: Sequence[LoadedModel] = (),
        fusers: Sequence[Fuser] = (),
        chat: bool = True,
        store: PrefixStore | None = None,
        translators: Sequence[Translator] = (),
    ) -> None:
        if len(fusers) != len(sharers) and not (translators and not fusers):
            raise C2CError(f"need one fuser per sharer: got {len(sharers)} sharer(s) and {len(fusers)} fuser(s)")
        if len(translators) > len(sharers):
            raise C2CError(f"at most one translator per sharer: got {len(sharers)} sharer(s), {len(translators)}")
        self.receiver, self.sharers, self.fusers, self.chat = receiver, list(sharers), list(fusers), chat
        self.translators = list(translators)
        self.translated_heads = PrefixStore(TRANSLATED_HEADS_BYTES)
        self.translator_fingerprints: dict[int, str] = {}
        for sharer, adapter in [*zip(self.sharers, self.translators), *zip(self.sharers, self.fusers)]:
            if known_identity(sharer) is None and adapter.config.sharer_fingerprint:
                # a sharer without weights here: it is the checkpoint its translator or fuser was made with
                pin_identity(sharer, ModelIdentity(sharer.name, adapter.config.sharer_fingerprint,
                                                   ModelGeometry.from_config(sharer.model.config)))  # fmt: skip
        for sharer, translator in zip(self.sharers, self.translators):
            check_translator(translator, receiver, sharer)
            translator.to(receiver.device).eval()
        r_geo = ModelGeometry.from_config(receiver.model.config)
        self.aligners: list[TokenAligner] = []
        for sharer, fuser in zip(self.sharers, self.fusers):
            s_geo = ModelGeometry.from_config(sharer.model.config)
            s_ident = known_identity(sharer)
            fuser.check_pair(receiver.name, r_geo, sharer.name, s_geo, identity_of(receiver).fingerprint,
                             s_ident.fingerprint if s_ident else None)  # fmt: skip
            fuser.to(receiver.device).eval()
            self.aligners.append(TokenAligner(receiver.tokenizer, sharer.tokenizer, fuser.config.token_alignment))
        self._fusion_enabled = True
        self._mismatched = False
        self.store = store
        self._pair_identity: ModelIdentity | None = None

    def answerer(self, mode: str) -> LoadedModel:
        """The model that answers in `mode`: the first sharer in mode "sharer", else the receiver."""
        return self.sharers[0] if mode == "sharer" else self.receiver

    @contextlib.contextmanager
    def disable_fuser(self) -> Iterator[None]:
        """Within this block, mode "c2c" still prefills the sharers but adds nothing to the receiver's cache."""
        self._fusion_enabled = False
        try:
            yield
        finally:
            self._fusion_enabled = True

    @contextlib.contextmanager
    def mismatched_sharers(self) -> Iterator[None]:
        """Within this block, mode "c2c" fuses each prompt with the sharers' caches of the *next* prompt of its
        batch (the control of inference/controls.py: what a fuser adds whatever the sharer read)."""
        self._mismatched = True
        try:
            yield
        finally:
            self._mismatched = False

    # ---- preparing a batch ----------------------------------------------------------------------------

    def encode(self, prompts: Sequence[Prompt], mode: str = "c2c", new_tokens: int = 0) -> Batch:
        """Tokenise, align and left-pad. Raises C2CError for empty prompts, and for prompts that leave no room
        for `new_tokens` in the answering model's context."""
        if mode not in MODES:
            raise C2CError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        if mode in ("c2c", "sharer", "translated") and not self.sharers:
            raise C2CError(f"mode {mode!r} needs at least one sharer")
        if mode == "c2c" and len(self.fusers) != len(self.sharers):
            raise C2CError("mode 'c2c' needs a fuser per sharer (this model has translators only)")
        if not prompts:
            raise C2CError("no prompts given")
        if mode == "translated":
            return self.encode_translated(prompts, new_tokens)
        messages = [(sharer_messages if mode == "sharer" else to_messages)(p) for p in prompts]
        answerer = self.answerer(mode)
        if mode != "c2c":
            rows = [encode(answerer.tokenizer, render(answerer.tokenizer, m, self.chat))[0] for m in messages]
            for r in rows:
                self._check_length(answerer, len(r), new_tokens)
            ids, mask, _ = left_pad(rows, answerer.tokenizer.pad_token_id, answerer.device)
            return Batch(ids, mask, [])
        sharer_views = [sharer_messages(p) for p in prompts]
        aligned: list[list[AlignedPrompt]] = [[al.align(m, self.chat, s) for m, s in zip(messages, sharer_views)]
                                              for al in self.aligners]  # fmt: skip
        for r in aligned[0]:
            self._check_length(self.receiver, len(r.receiver_ids), new_tokens)
        for sharer, per_prompt in zip(self.sharers, aligned):
            for a in per_prompt:
                self._check_length(sharer, len(a.sharer_ids), new_tokens=0)
        return self.batch_from_aligned(aligned)

    def batch_from_aligned(self, aligned: Sequence[Sequence[AlignedPrompt]]) -> Batch:
        """Left-pad aligned prompts (outer index: sharer, inner: prompt) and map receiver padded positions to
        sharer padded positions."""
        rows = [a.receiver_ids for a in aligned[0]]
        ids, mask, pads = left_pad(rows, self.receiver.tokenizer.pad_token_id, self.receiver.device)
        sharers = []
        for sharer, per_prompt in zip(self.sharers, aligned):
            s_ids, s_mask, s_pads = left_pad([a.sharer_ids for a in per_prompt], sharer.tokenizer.pad_token_id,
                                              sharer.device)  # fmt: skip
            index = torch.zeros_like(ids)
            for b, a in enumerate(per_prompt):
                index[b, pads[b]:] = torch.tensor(a.sharer_index, device=ids.device) + s_pads[b]
            sharers.append((s_ids, s_mask, index))
        return Batch(ids, mask, sharers)

    @staticmethod
    def _check_length(model: LoadedModel, n: int, new_tokens: int) -> None:
        if n + new_tokens > model.max_length:
            raise C2CError(f"prompt ({n} tokens) + {new_tokens} new tokens exceeds {model.name}'s context of "
                           f"{model.max_length} tokens")  # fmt: skip

    # ---- prefill and fusion ---------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, batch: Batch, mode: str = "c2c") -> tuple[Cache, Timings]:
        """Prefill all prompt tokens but the last and, in mode c2c, fuse the sharers' caches in. With a prefix
        store, every model resumes from the longest cached prefix of its prompt, and fusion from the longest
        fused prefix (fusion is per position, so a prefix's fused keys and values do not change)."""
        if mode == "translated":
            return self.prefill_translated(batch)
        answerer = self.answerer(mode)
        fusing = mode == "c2c" and self._fusion_enabled
        timings = Timings()
        t0 = clock(answerer.device)
        sharer_caches = self.prefill_sharers(batch) if mode == "c2c" else []
        fusion_batch = rotate_sharers(batch, sharer_caches) if fusing and self._mismatched else batch
        t1 = clock(answerer.device)
        cache = self.prefill_answerer(batch, answerer)
        reusing = fusing and self.store is not None and not self._mismatched
        aligned_rows = self.alignment_rows(batch) if reusing else []  # once, for the lookup and the store
        fresh = self._reuse_fused(cache, batch, aligned_rows) if reusing else None
        t2 = clock(answerer.device)
        if fusing:
            self.fuse(cache, sharer_caches, fusion_batch, fresh)
            if reusing:
                self._store_fused(cache, batch, aligned_rows)
        t3 = clock(answerer.device)
        timings.sharer_prefill_s, timings.receiver_prefill_s, timings.fuse_s = t1 - t0, t2 - t1, t3 - t2
        return cache, timings

    def prefill_sharers(self, batch: Batch) -> list[Cache]:
        """Each sharer reads its whole prompt; its cache keeps every position (sliding layers included)."""
        caches = []
        for sharer, (s_ids, s_mask, _) in zip(self.sharers, batch.sharers):
            if self.store is not None:
                caches.append(self._from_store(sharer, _rows(s_ids, s_mask)))
                continue
            cache = new_cache(sharer.model.config, keep_full_history=True)
            sharer.model(input_ids=s_ids, attention_mask=s_mask, position_ids=positions(s_mask),
                         past_key_values=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
            caches.append(cache)
        return caches

    def prefill_answerer(self, batch: Batch, answerer: LoadedModel) -> Cache:
        """The answering model reads every prompt token but the last (which generation or training feeds)."""
        if self.store is not None and batch.ids.shape[1] > 1:
            return self._from_store(answerer, _rows(batch.ids[:, :-1], batch.mask[:, :-1]))
        cache = new_cache(answerer.model.config)
        if batch.ids.shape[1] > 1:
            ids, mask = batch.ids[:, :-1], batch.mask[:, :-1]
            answerer.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), past_key_values=cache,
                           use_cache=True, logits_to_keep=1)  # fmt: skip
        return cache

    def fuse(self, cache: Cache, sharer_caches: Sequence[Cache], batch: Batch, fresh: torch.Tensor | None = None
             ) -> None:  # fmt: skip
        """Add every fuser's deltas (all computed from the receiver's own cache) to `cache` in place, at the
        positions `fresh` (B, T) marks (default: every real prompt position but the last). Deltas are computed
        only from the first column any row still needs.

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
            for fuser, s_cache, (_, _, index) in zip(self.fusers, sharer_caches, batch.sharers)
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

    # ---- generation -----------------------------------------------------------------------------------

    def _generation_config(self, model: LoadedModel, options: GenerateOptions) -> GenerationConfig:
        base = model.model.generation_config
        sampling = (
            dict(do_sample=True, temperature=options.temperature, top_p=options.top_p, top_k=options.top_k or None)
            if options.do_sample
            else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        )
        return GenerationConfig(
            max_new_tokens=options.max_new_tokens,
            min_new_tokens=options.min_new_tokens or None,
            eos_token_id=base.eos_token_id if base.eos_token_id is not None else model.tokenizer.eos_token_id,
            pad_token_id=model.tokenizer.pad_token_id,
            bos_token_id=base.bos_token_id,
            **sampling,
        )

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Prompt],
        mode: str = "c2c",
        options: GenerateOptions | None = None,
        streamer=None,
        stopping_criteria=None,
    ) -> GenerationOutput:
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
                generation_config=self._generation_config(answerer, options), streamer=streamer,
                stopping_criteria=stopping_criteria,
            )  # fmt: skip
        timings.decode_s = clock(answerer.device) - t0
        new = out[:, batch.ids.shape[1]:]
        results = []
        eos = self.eos_ids(answerer)
        for b in range(new.shape[0]):
            row = new[b].tolist()
            n = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            results.append(
                GenerationResult(
                    text=answerer.tokenizer.decode(row[:n], skip_special_tokens=True),
                    prompt_tokens=int(batch.mask[b].sum()),
                    new_tokens=n,
                    sharer_prompt_tokens=[int(s_mask[b].sum()) for _, s_mask, _ in batch.sharers],
                )
            )
        return GenerationOutput(mode=mode, results=results, timings=timings)

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
        out = answerer.model(input_ids=batch.ids[:, -1:], attention_mask=batch.mask,
                             position_ids=positions(batch.mask)[:, -1:], past_key_values=cache)  # fmt: skip
        logits = out.logits[:, -1].float()
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
        rows = [encode(answerer.tokenizer, c)[0] or [answerer.tokenizer.eos_token_id]
                for opts in continuations for c in opts]  # fmt: skip
        batch = self.encode(prompts, mode, new_tokens=max(map(len, rows)))  # the longest option must fit too
        cache, timings = self.prefill(batch, mode)
        t0 = clock(answerer.device)
        owner = torch.tensor([i for i, opts in enumerate(continuations) for _ in opts], device=batch.ids.device)
        cache.batch_select_indices(owner)
        expanded = Batch(batch.ids[owner], batch.mask[owner], [])
        ids, mask = right_pad(rows, 0, batch.ids.device)  # pad id is masked out, any valid id will do
        logp = self.continuation_logits(expanded, cache, answerer, ids, mask).float().log_softmax(-1)
        flat = (logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask).sum(-1).tolist()
        greedy = ((logp.argmax(-1) == ids) | (mask == 0)).all(-1).tolist()
        timings.decode_s = clock(answerer.device) - t0
        out, flags, k = [], [], 0
        for opts in continuations:
            out.append(flat[k:k + len(opts)])
            flags.append(greedy[k:k + len(opts)])
            k += len(opts)
        return out, flags, timings

    @staticmethod
    def continuation_logits(
        batch: Batch, cache: Cache, answerer: LoadedModel, cont_ids: torch.Tensor, cont_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, R, V) logits predicting each token of right-padded continuations (B, R) from a prefilled (and
        fused) prompt cache: the receiver reads the last prompt token and the continuation but its last token.
        Used by training (the response loss, with gradients) and by cloze scoring (without)."""
        b, r = cont_ids.shape
        ones = torch.ones(b, 1, dtype=batch.mask.dtype, device=batch.mask.device)
        x = torch.cat([batch.ids[:, -1:], cont_ids[:, :-1]], dim=1)
        x_mask = torch.cat([ones, cont_mask[:, :-1]], dim=1)
        pos = (batch.mask.sum(-1, keepdim=True) - 1) + torch.arange(r, device=x.device)  # continue prompt
        return answerer.model(input_ids=x, attention_mask=torch.cat([batch.mask[:, :-1], x_mask], dim=1),
                              position_ids=pos, past_key_values=cache, use_cache=True).logits  # fmt: skip

    @staticmethod
    def eos_ids(model: LoadedModel) -> set[int]:
        eos = model.model.generation_config.eos_token_id
        if eos is None:
            eos = model.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def stream(self, prompt: Prompt, mode: str = "c2c", options: GenerateOptions | None = None) -> Iterator[str]:
        """Yield the answer to one prompt piece by piece as it is decoded."""
        answerer = self.answerer(mode)
        streamer = TextIteratorStreamer(answerer.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.generate([prompt], mode, options, streamer=streamer)
            except BaseException as e:  # handed to the consumer below, never lost
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]
