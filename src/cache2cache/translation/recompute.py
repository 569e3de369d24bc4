"""The fidelity knob: which of its own layers the receiver computes over a brief it never read.

A translated brief costs the receiver nothing to read, and loses some of what reading gives (facts, exact spans:
docs/RESULTS.md). The knob buys fidelity back with a share of the receiver's own prefill, from either end:

    own_first m   the receiver runs its first m layers over the brief's tokens (m / L of reading it itself); the
                  translator writes the layers above. Lower layers are the cheap, predictable ones.
    own_from m    the translator's entry map writes the hidden state entering receiver layer m, and the receiver
                  runs its layers m..L-1 over the brief from that state ((L - m) / L of reading it); the translator
                  writes the layers below. The upper layers, where copying heads read the previous token and the
                  answer is assembled, become the receiver's own computation of (a translation of) the text.
    own_to u      with own_from m: the receiver runs only its layers m..u-1 from that state ((u - m) / L); the
                  translator writes the layers below m and from u on. A window of the layers that matter most
                  (DroidSpeak profiles its critical layers) instead of the whole top.
    own_tokens p  the receiver's own layers (from own_from, or all of them from its embeddings) run over only a
                  share p of the brief's tokens, names and numbers and the word before each first (`pick`);
                  the other tokens keep the translated keys and values at every layer. CacheBlend's selective
                  recompute (arXiv 2405.16444) across families: a fact is a few tokens, and copying it needs
                  those tokens' own keys and the key of the word that leads into it.

This is DroidSpeak's partial recompute (arXiv 2411.02820: recompute a few layers from the stored hidden state,
reuse the others' KV) carried across model families, the E-cache being translated instead of shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..caches.prompt_cache import PromptCache
from ..errors import C2CError
from ..kv import ModelGeometry, new_cache
from ..models.layer_view import first_layers, only_layers
from ..models.loading import LoadedModel, decoder_layers
from .translator import Translator

PICKS = ("facts", "spread")


@dataclass(frozen=True)
class Recompute:
    """Which receiver layers it computes itself over a translated brief (0 = none from that end)."""

    own_first: int = 0
    own_from: int = 0
    own_to: int = 0  # with own_from: the receiver's own layers end before this one (0: at the top)
    own_tokens: float = 1.0  # the share of the brief's tokens those layers run over (1: all)
    pick: str = "facts"  # which tokens: names and numbers first, or "spread" evenly (pick_tokens)

    def check(self, receiver: LoadedModel, translators: Sequence[Translator]) -> None:
        """Raise C2CError unless both ends fit the receiver's depth, do not overlap, and every translator has an
        entry map for `own_from`."""
        n = len(decoder_layers(receiver.model))
        for name, m, top in (("own layers", self.own_first, n), ("own-from layer", self.own_from, n - 1)):
            if type(m) is not int or not 0 <= m <= top:
                raise C2CError(f"{name} must be 0-{top} ({receiver.name} has {n} layers), got {m!r}")
        if self.own_from and self.own_first >= self.own_from:
            raise C2CError(f"own layers ({self.own_first}) and own-from layer ({self.own_from}) overlap")
        if self.own_to and (type(self.own_to) is not int or not self.own_from or not self.own_from < self.own_to <= n):
            raise C2CError(f"own-to layer must follow an own-from layer M and be M+1-{n} ({receiver.name} has {n} "
                           f"layers), got {self.own_to!r} with own-from {self.own_from}")
        if not isinstance(self.own_tokens, (int, float)) or not 0 < self.own_tokens <= 1:
            raise C2CError(f"own-tokens must be a share in (0, 1], got {self.own_tokens!r}")
        if self.pick not in PICKS:
            raise C2CError(f"pick must be one of {', '.join(PICKS)}, got {self.pick!r}")
        if self.selective and self.own_first:
            raise C2CError("own-tokens applies to the layers from own-from (or all layers), not to own layers")
        for t in translators if self.own_from else ():
            if self.own_from not in t.config.entry_layers:
                have = ", ".join(map(str, t.config.entry_layers)) or "none"
                raise C2CError(f"translator {t.source or ''} has no entry map for layer {self.own_from} (it has: "
                               f"{have}); fit one with `c2c fit --from DIR --entry-layers {self.own_from}`")

    @property
    def selective(self) -> bool:
        """Whether the receiver's own layers run over only some of the brief's tokens."""
        return self.own_tokens < 1

    def space(self) -> str:
        """What a store namespace adds for heads written with this knob (apart from the translated ones)."""
        return ((f"+own:{self.own_first}" if self.own_first else "") + (f"+from:{self.own_from}" if self.own_from
                else "") + (f"+to:{self.own_to}" if self.own_to else "")
                + (f"+tokens:{self.own_tokens:g}:{self.pick}" if self.selective else ""))  # fmt: skip

    def share(self, num_layers: int) -> float:
        """The share of the receiver's own prefill (layers over the brief, tokens over the brief) this knob costs."""
        own = self.top(num_layers) - self.own_from if self.own_from or self.selective else 0
        return (self.own_first + own * self.own_tokens) / num_layers

    def top(self, num_layers: int) -> int:
        """The layer the receiver's own layers from `own_from` end before."""
        return self.own_to or num_layers

    @classmethod
    def of(cls, meta: dict) -> Recompute:
        """The knob a translated cache was written with, from its meta (`meta()`; none when the keys are absent)."""
        return cls(meta.get("own_layers", 0), meta.get("own_from", 0), meta.get("own_to", 0),
                   meta.get("own_tokens", 1.0), meta.get("pick", "facts"))  # fmt: skip

    def meta(self) -> dict:
        return ({"own_layers": self.own_first, "own_from": self.own_from} | ({"own_to": self.own_to} if self.own_to
                else {}) | ({"own_tokens": self.own_tokens, "pick": self.pick} if self.selective else {}))  # fmt: skip


@torch.no_grad()
def lower_layers(model: LoadedModel, ids: list[int], m: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The model's own cache keys (rotated) and values of `ids` at its first `m` layers, each (kv_heads, T, d),
    computed by running only those layers (m / L of a prefill's layer work)."""
    cache = new_cache(model.model.config, keep_full_history=True)
    with first_layers(model.model, m):
        model.model.model(input_ids=torch.tensor([ids], device=model.device), past_key_values=cache, use_cache=True,
                          position_ids=torch.arange(len(ids), device=model.device)[None])  # fmt: skip
    return [cache.layers[i].keys[0] for i in range(m)], [cache.layers[i].values[0] for i in range(m)]


@torch.no_grad()
def upper_layers(model: LoadedModel, prefix: PromptCache, ids: list[int], state: torch.Tensor, m: int,
                 end: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """The model's own cache keys (rotated) and values at layers m..end-1 (end: L) over `prefix`'s tokens followed
    by `ids`, each (kv_heads, len(prefix) + len(ids), d): the prefix's from its cache, the new tokens' computed by
    running only those layers from `state` (len(ids), hidden), the hidden state entering layer m at those tokens."""
    top, start = end or len(decoder_layers(model.model)), len(prefix)
    if state.shape[0] != len(ids):
        raise C2CError(f"{state.shape[0]} entering states for {len(ids)} tokens")
    cache = prefix.to_transformers(model) if start else new_cache(model.model.config, keep_full_history=True)
    view = only_layers(model.model, m, top, state[None].to(model.device, model.model.dtype))
    view(input_ids=torch.tensor([ids], device=model.device),
         attention_mask=torch.ones(1, start + len(ids), dtype=torch.long, device=model.device),
         position_ids=torch.arange(start, start + len(ids), device=model.device)[None], past_key_values=cache,
         use_cache=True)  # fmt: skip
    return ([cache.layers[i].keys[0] for i in range(m, top)],
            [cache.layers[i].values[0] for i in range(m, top)])  # fmt: skip


def pick_tokens(model: LoadedModel, ids: list[int], share: float, how: str = "facts") -> list[int]:
    """ceil(share * T) of the brief's T tokens (`ids`), in order, for the receiver to recompute. "facts": the
    tokens of names and numbers first (`fact_tokens`), then those of the word before each (`lead_tokens`), then
    evenly spaced tokens among the others; a tier that exceeds what is left of the share is thinned evenly.
    "spread": evenly spaced over all of them (what the choice is judged by)."""
    k = min(len(ids), max(1, math.ceil(share * len(ids))))
    if how == "spread":
        return evenly(list(range(len(ids))), k)
    facts, leads = fact_tokens(model, ids), lead_tokens(model, ids)
    picked: list[int] = []
    for tier in (facts, leads, ~(facts | leads)):
        picked += evenly(torch.nonzero(tier).flatten().tolist(), k - len(picked))
    return sorted(picked)


def evenly(candidates: list[int], k: int) -> list[int]:
    """k of `candidates` (in order), evenly spaced, the first and last among them."""
    if k <= 0 or not candidates:
        return []
    return sorted({candidates[j] for j in torch.linspace(0, len(candidates) - 1, k).round().long().tolist()})


def words(model: LoadedModel, ids: list[int]) -> list[tuple[str, list[int]]]:
    """The brief's words with their tokens: runs of tokens up to the next one that starts with a space."""
    texts = [model.tokenizer.decode([t]) for t in ids]
    out: list[tuple[str, list[int]]] = []
    for i, text in enumerate(texts):
        if not out or text[:1].isspace():
            out.append(("", []))
        out[-1] = (out[-1][0] + text, out[-1][1] + [i])
    return [(w.strip(), tokens) for w, tokens in out]


def fact_words(ws: list[tuple[str, list[int]]]) -> list[bool]:
    """Per word (of `words`): whether it states a fact a reader must copy exactly: it holds a digit, or it is a
    capitalised word that does not start a sentence (names, places, months)."""
    out, sentence_start = [], True
    for w, _ in ws:
        out.append(any(c.isdigit() for c in w) or (w[:1].isupper() and not sentence_start))
        sentence_start = w[-1] in ".!?:" if w else sentence_start
    return out


def fact_tokens(model: LoadedModel, ids: list[int]) -> torch.Tensor:
    """(T,) bool: every token of the fact words (`fact_words`), so every piece of a name or a number is in."""
    out, ws = torch.zeros(len(ids), dtype=torch.bool), words(model, ids)
    for (_, tokens), fact in zip(ws, fact_words(ws)):
        out[tokens] = fact
    return out


def lead_tokens(model: LoadedModel, ids: list[int]) -> torch.Tensor:
    """(T,) bool: the tokens of the word just before each run of fact words ("leader," before "Mara Ilves",
    "counted" before "412"). A question finds a fact through the words that lead into it, and copying the fact's first
    piece needs the key of the token before it, the one previous-token heads read."""
    out, ws = torch.zeros(len(ids), dtype=torch.bool), words(model, ids)
    facts = fact_words(ws)
    for j in range(1, len(ws)):
        if facts[j] and not facts[j - 1]:
            out[ws[j - 1][1]] = True
    return out


def selected_layers(model: LoadedModel, prefix: PromptCache, ids: list[int], state: torch.Tensor | None, m: int,
                    end: int, keys: list[torch.Tensor], values: list[torch.Tensor], picked: list[int]
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """Every layer's keys and values over `prefix`'s tokens followed by `ids` (`keys`, `values`: the translated
    ones, (kv_heads, len(prefix) + T, d)), the model's own at layers m..end-1 for the `picked` brief tokens: those
    tokens run through only those layers (from `state`, the (T, hidden) states entering layer m; None at m = 0),
    attending to the translated keys and values of every other token before them and to each other's own. A
    sliding-window receiver is served while the prompt up to the brief's end fits in its window (one mask for every
    layer is then exact), refused beyond. Differentiable in `keys`, `values` and `state` (the distillation's student,
    distill.py); the pipeline calls it without gradients."""
    start, n, k = len(prefix), len(ids), len(picked)
    windows = [g.sliding_window for g in ModelGeometry.from_config(model.model.config).layers if g.sliding_window]
    if windows and start + n > min(windows) - 1:  # then a sliding layer would show the picked tokens another window
        raise C2CError(f"own-tokens on {model.name}: its sliding-window layers see {min(windows) - 1} tokens back, "
                       f"and the prompt up to the brief's end is {start + n}; use --own-from or a shorter brief")
    at = torch.tensor(picked, device=model.device)
    full = PromptCache(prefix.identity, list(prefix.token_ids) + list(ids), keys, values, None, None, prefix.chat)
    cache = full.to_transformers(model)
    allowed = torch.zeros(k, start + n + k, dtype=torch.bool, device=model.device)
    allowed[:, :start] = True
    others = torch.ones(n, dtype=torch.bool, device=model.device)
    others[at] = False
    allowed[:, start:start + n] = (torch.arange(n, device=model.device)[None] < at[:, None]) & others[None]
    allowed[:, start + n:] = at[None] <= at[:, None]
    mask = torch.zeros(allowed.shape, dtype=model.model.dtype, device=model.device)
    mask = mask.masked_fill(~allowed, torch.finfo(mask.dtype).min)[None, None]
    hidden = None if state is None else state[at][None].to(model.device, model.model.dtype)
    view = only_layers(model.model, m, end, hidden)
    view(input_ids=torch.tensor([ids], device=model.device)[:, at], attention_mask=mask,
         position_ids=(start + at)[None], past_key_values=cache, use_cache=True)  # fmt: skip
    keys = [t.clone() if m <= i < end else t for i, t in enumerate(keys)]  # only the layers written below
    values = [t.clone() if m <= i < end else t for i, t in enumerate(values)]
    for i in range(m, end):
        keys[i][:, start + at] = cache.layers[i].keys[0][:, start + n:].to(keys[i].dtype)
        values[i][:, start + at] = cache.layers[i].values[0][:, start + n:].to(values[i].dtype)
    return keys, values
