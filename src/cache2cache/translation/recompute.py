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

This is DroidSpeak's partial recompute (arXiv 2411.02820: recompute a few layers from the stored hidden state,
reuse the others' KV) carried across model families, the E-cache being translated instead of shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..caches.prompt_cache import PromptCache
from ..errors import C2CError
from ..kv import new_cache
from ..models.layer_view import first_layers, only_layers
from ..models.loading import LoadedModel, decoder_layers
from .translator import Translator


@dataclass(frozen=True)
class Recompute:
    """Which receiver layers it computes itself over a translated brief (0 = none from that end)."""

    own_first: int = 0
    own_from: int = 0
    own_to: int = 0  # with own_from: the receiver's own layers end before this one (0: at the top)

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
        for t in translators if self.own_from else ():
            if self.own_from not in t.config.entry_layers:
                have = ", ".join(map(str, t.config.entry_layers)) or "none"
                raise C2CError(f"translator {t.source or ''} has no entry map for layer {self.own_from} (it has: "
                               f"{have}); fit one with `c2c fit --from DIR --entry-layers {self.own_from}`")

    def space(self) -> str:
        """What a store namespace adds for heads written with this knob (apart from the translated ones)."""
        return ((f"+own:{self.own_first}" if self.own_first else "") + (f"+from:{self.own_from}" if self.own_from
                else "") + (f"+to:{self.own_to}" if self.own_to else ""))  # fmt: skip

    def share(self, num_layers: int) -> float:
        """The share of the receiver's own prefill (layers over the brief) this knob costs."""
        return (self.own_first + (self.top(num_layers) - self.own_from if self.own_from else 0)) / num_layers

    def top(self, num_layers: int) -> int:
        """The layer the receiver's own layers from `own_from` end before."""
        return self.own_to or num_layers

    def meta(self) -> dict:
        return {"own_layers": self.own_first, "own_from": self.own_from} | ({"own_to": self.own_to} if self.own_to
                                                                          else {})  # fmt: skip


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
