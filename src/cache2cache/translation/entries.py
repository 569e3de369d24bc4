"""Entry maps: the receiver's hidden state entering layer m, written from the sharer's reading of a brief.

What the knob from the top needs (recompute.py: the receiver runs its layers m..L-1 over a brief from this state).
Fitted like the key and value maps: both models read each passage as a brief, in their own templates; per entry
layer m, streaming moments of the features (the sharer's state entering its layer of the same relative depth, or
those of a window of layers around it, the receiver's embedding of the token and of the token before) against the
receiver's own state entering layer m; then standardised ridge, its strength chosen on every tenth passage, the
held-out R² recorded (fit.solve_entries). A fresh fit gathers these moments in the same reading as the key and
value maps' (fit.accumulate); `fit_entries` adds entry maps to a translator that exists, reading the passages for
them alone. The moments are checkpointed, so a killed fit resumes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..errors import C2CError
from ..models.loading import LoadedModel, decoder_layers
from .fit import EntryReading, solve_entries
from .moments import stream_moments
from .translator import Translator


def check_entry_layers(receiver: LoadedModel, layers: list[int]) -> list[int]:
    """`layers`, sorted and unique, or C2CError unless each is a receiver layer above the first."""
    n = len(decoder_layers(receiver.model))
    if not layers or any(type(m) is not int or not 0 < m < n for m in layers):
        raise C2CError(f"entry layers must be {receiver.name}'s layers 1-{n - 1}, got {layers}")
    return sorted(set(layers))


def fit_entries(translator: Translator, receiver: LoadedModel, sharer: LoadedModel, texts: list[tuple[str, str]],
                layers: list[int], stats: Path, chat: bool = True, text: str = "", window: int = 1) -> Translator:
    """A copy of `translator` with entry maps for receiver `layers`, each reading the states entering `window`
    sharer layers, fitted on `texts` ((source, passage) pairs; `text` names them in the config), the moments kept
    at `stats`."""
    layers = check_entry_layers(receiver, layers)
    cfg = replace(translator.config, entry_layers=layers, fit=dict(translator.config.fit), entry_window=window,
                  sharer_hidden=sharer.model.config.get_text_config().hidden_size)  # fmt: skip
    entries = EntryReading.of(cfg)
    layout = {"kind": "entries", "receiver": cfg.receiver, "sharer": cfg.sharer,
              "receiver_fingerprint": cfg.receiver_fingerprint, "sharer_fingerprint": cfg.sharer_fingerprint,
              "entry_layers": layers, "windows": [cfg.entry_sharer_layers(m) for m in layers]}  # fmt: skip

    def read(index: int, passage: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return entries.blocks(entries.pair(receiver, sharer, passage, chat))

    dims = [(cfg.entry_dim(), cfg.receiver_hidden)] * len(layers)
    state = stream_moments(texts, stats, layout, dims, read, desc="entry maps")
    out = Translator(cfg)
    kept = {k: v for k, v in translator.state_dict().items() if not k.startswith("entries.")}
    out.load_state_dict(kept, strict=False)  # the key and value maps as they were; entry maps anew
    solve_entries(out, state.fit, state.held, state, text)
    out.source = translator.source
    return out.to(receiver.device).eval()
