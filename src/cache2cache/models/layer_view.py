"""A view of a decoder that runs only some of its layers, fed a given hidden state at the first of them.

What partial recompute needs, for one base (reuse/partial.py: B's layers from A's E-cache) and across families
(translation/recompute.py: the receiver's upper layers from a translated state). Layers outside the range are
replaced by identities in a view that shares every weight, so the model's own forward builds the masks and the
rotary embeddings (sliding windows included), no architecture-specific code is needed, and the shared model is
never modified (other threads, a server's requests, can use it meanwhile).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import nn

from .loading import decoder_layers


class _Skip(nn.Module):
    """Stands in for a decoder layer that must not run: hands the hidden states on untouched."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Fed(nn.Module):
    """The range's first layer, reading a given hidden state instead of the one that reaches it (all skipped)."""

    def __init__(self, layer: nn.Module, hidden: torch.Tensor) -> None:
        super().__init__()
        self.layer, self.hidden = layer, hidden

    def forward(self, hidden_states, *args, **kwargs):
        return self.layer(self.hidden, *args, **kwargs)


def only_layers(model: nn.Module, start: int, end: int, hidden: torch.Tensor | None) -> nn.Module:
    """A view of `model`'s decoder (the module holding `layers`) that runs only layers start..end-1, fed `hidden`
    (batch, tokens, hidden size) at `start` when given; call it as the decoder (input_ids, masks, cache)."""
    layers = decoder_layers(model)
    view = copy.copy(model.model)
    view._modules = dict(view._modules)  # the view's own submodule table; the modules themselves are shared
    run = [layer if start <= i < end else _Skip() for i, layer in enumerate(layers)]
    if hidden is not None:
        run[start] = _Fed(layers[start], hidden)
    view.layers = nn.ModuleList(run)
    return view


class _Stop(Exception):
    """Raised before the first layer a partial forward does not need: that layer and those above never run."""


@contextlib.contextmanager
def first_layers(model: nn.Module, n: int) -> Iterator[None]:
    """Within this block a forward of `model` runs only its first `n` decoder layers, and the call that makes it
    ends the block there (the states entering layer n are still seen by hooks registered before). What a reading
    costs that needs only lower layers' keys, values or entering states (n / L of a prefill's layer work)."""
    layers = decoder_layers(model)
    if n >= len(layers):
        yield
        return

    def stop(*_) -> None:
        raise _Stop

    handle = layers[n].register_forward_pre_hook(stop)
    try:
        yield
    except _Stop:
        pass
    finally:
        handle.remove()
