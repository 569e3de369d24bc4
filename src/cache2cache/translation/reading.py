"""Receiver-blind reading: the sharer reads a brief, the receiver gets the translated cache of it.

`translate_brief` is the whole message path: the sharer reads its own rendering of the prompt up to the end of
the brief (never the question after it), the translator writes the receiver's keys and values of the brief's
tokens, and the receiver contributes only its own template tokens before the brief. The result is a
`PromptCache` of the receiver, like one it computed itself, so it extends with a question (`cache.extend`), saves,
travels and stacks into batches like any other.
"""

from __future__ import annotations

import torch

from ..alignment.tokens import PART_SEPARATOR, Messages
from ..caches.prompt_cache import PromptCache, layer_inputs
from ..caches.store import PrefixStore
from ..errors import C2CError
from ..kv import ModelGeometry, new_cache
from ..models.layer_view import first_layers
from ..models.loading import LoadedModel, decoder_layers
from .features import BriefSpan, align_spans, rotary, rotate, unrotate
from .recompute import Recompute, lower_layers, pick_tokens, selected_layers, upper_layers
from .translator import Translator


@torch.no_grad()
def prerope_kv(model: LoadedModel, ids: list[int], queries: bool = False, depth: int | None = None
               ) -> tuple[list[torch.Tensor], ...]:  # fmt: skip
    """Run `model` over `ids` (batch 1, positions 0..T-1); per layer its pre-RoPE keys and its values, each
    (T, kv_heads * head_dim) float32, and with `queries` also its pre-RoPE queries (T, heads * head_dim). With
    `depth`, only its first `depth` layers run (and are returned)."""
    if model.is_skeleton:
        raise C2CError(f"{model.name} has no weights in this process: it cannot read the brief here")
    cache = new_cache(model.model.config, keep_full_history=True)
    x = torch.tensor([ids], device=model.device)
    hooks, captured = [], {}
    if queries:
        for i, layer in enumerate(decoder_layers(model.model)):
            hooks.append(layer.self_attn.q_proj.register_forward_hook(
                lambda mod, args, out, i=i: captured.__setitem__(i, out[0].detach())))  # fmt: skip
    depth = len(decoder_layers(model.model)) if depth is None else depth
    try:
        with first_layers(model.model, depth):
            model.model.model(input_ids=x, position_ids=torch.arange(len(ids), device=model.device)[None],
                              past_key_values=cache, use_cache=True)  # fmt: skip
    finally:
        for h in hooks:
            h.remove()
    keys, values = prerope_of(model, [layer.keys[0] for layer in cache.layers[:depth]],
                              [layer.values[0] for layer in cache.layers[:depth]])  # fmt: skip
    qs = []
    for i in range(len(keys) if queries else 0):
        attn = decoder_layers(model.model)[i].self_attn
        q = captured[i].view(len(ids), -1, model_head_dim(model, i))
        q = attn.q_norm(q) if hasattr(attn, "q_norm") else q
        qs.append(q.float().reshape(len(ids), -1))
    return (keys, values, qs) if queries else (keys, values)


def prerope_of(model: LoadedModel, keys: list[torch.Tensor], values: list[torch.Tensor]
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """Per layer (kv_heads, T, head_dim) cache keys (positions 0..T-1) and values -> (T, kv) pre-RoPE keys and
    values, float32."""
    n = keys[0].shape[-2]
    pos = torch.arange(n, device=keys[0].device)
    out_k, out_v = [], []
    for i, (k, v) in enumerate(zip(keys, values)):
        cos, sin = rotary(model, i, pos)
        out_k.append(unrotate(k.float(), cos, sin).transpose(0, 1).reshape(n, -1))
        out_v.append(v.float().transpose(0, 1).reshape(n, -1))
    return out_k, out_v


def model_head_dim(model: LoadedModel, layer: int) -> int:
    return ModelGeometry.from_config(model.model.config).layers[layer].head_dim


def embeddings(model: LoadedModel, ids: list[int]) -> torch.Tensor:
    """(T, hidden) float32: the receiver's own input embedding of token ids (what travels instead of its states)."""
    with torch.no_grad():
        return model.model.get_input_embeddings()(torch.tensor(ids, device=model.device)).float()


@torch.no_grad()
def sharer_reading(sharer: LoadedModel, messages: Messages, brief: str, spans: list[tuple[int, int]],
                   device: torch.device, chat: bool = True, store: PrefixStore | None = None,
                   states_of: list[int] | None = None, depth: int | None = None
                   ) -> tuple[list[torch.Tensor], ...]:  # fmt: skip
    """The sharer reads `messages` with `brief` up to the brief's end (never what follows). Per sharer layer, the
    pre-RoPE keys and values (T, kv) of the sharer token aligned to each of T receiver tokens, given as character
    `spans` of `brief`, on `device`; with `states_of` layers, also the hidden states entering those sharer layers
    there, side by side (T, layers * hidden; the same forward). With a `store`, the sharer's reading comes from it
    (and goes into it): another translator of the same brief does not make the sharer read it again (not when
    states are asked for). With `depth`, the sharer runs only its first `depth` layers (states_of must lie at or
    below it; a store's reading is whole, so then none is used) and the keys and values of those come back."""
    s_span = BriefSpan.of(sharer, messages, brief, chat)
    if s_span.end > sharer.max_length:
        raise C2CError(f"the brief's {s_span.end} tokens exceed {sharer.name}'s context of {sharer.max_length}")
    index = torch.tensor([s_span.start + j for j in align_spans(spans, s_span.spans)], device=sharer.device)
    states = layer_inputs(sharer) if states_of else None
    try:
        if store is not None and states is None and depth is None:
            read = store.prefill(sharer, s_span.ids[:s_span.end], chat=chat)
            s_keys, s_values = prerope_of(sharer, read.keys, read.values)
        else:
            s_keys, s_values = prerope_kv(sharer, s_span.ids[:s_span.end], depth=depth)
    finally:
        if states is not None:
            states.close()
    out = [k[index].to(device) for k in s_keys], [v[index].to(device) for v in s_values]
    if states is None:
        return out
    return (*out, torch.cat([states.states[s][0, index].float() for s in states_of], -1).to(device))


def read_brief(receiver: LoadedModel, sharer: LoadedModel, messages: Messages, brief: str, chat: bool = True,
               store: PrefixStore | None = None, states_of: list[int] | None = None) -> tuple:
    """The receiver's `BriefSpan` of `messages` with `brief`, and the sharer's reading aligned to its brief tokens
    (`sharer_reading`: keys, values, and with `states_of` the states entering those sharer layers)."""
    r_span = BriefSpan.of(receiver, messages, brief, chat)
    return (r_span, *sharer_reading(sharer, messages, brief, r_span.spans, receiver.device, chat, store, states_of))


@torch.no_grad()
def translate_brief(translator: Translator, receiver: LoadedModel, sharer: LoadedModel, messages: Messages,
                    brief: str, chat: bool = True, store: PrefixStore | None = None
                    ) -> tuple[PromptCache, BriefSpan]:  # fmt: skip
    """The receiver's cache of `messages` with `brief` placed before the last user message, up to the brief's
    end: its own keys and values for the template tokens before the brief, translated ones for the brief. Also
    returns the receiver's `BriefSpan` (its full token ids: the caller reads the tokens after the brief)."""
    return translate_parts([(translator, sharer)], receiver, messages, [brief], chat, store)


@torch.no_grad()
def translate_parts(senders: list[tuple[Translator, LoadedModel]], receiver: LoadedModel, messages: Messages,
                    parts: list[str], chat: bool = True, store: PrefixStore | None = None,
                    recompute: Recompute = Recompute()) -> tuple[PromptCache, BriefSpan]:  # fmt: skip
    """As `translate_brief`, for a brief of several parts (joined by a blank line), part j read by sender j
    alone and written by its translator: several senders' documents in one receiver cache, each at the
    receiver positions it holds in the whole brief. A token that straddles two parts belongs to the first.
    `recompute` is the fidelity knob (recompute.py): the receiver's own first layers over the brief, and/or its
    own layers from m on, run from the hidden state the translators' entry maps write (with `own_tokens`, over
    only the brief tokens it picks, the others keeping translated layers: then the sharers read whole); each reads
    only as deep as its translator's maps of the layers below m and its entry map need (`sharer_depth`)."""
    parts = [part.strip() for part in parts]
    if len(parts) != len(senders) or not all(parts):
        raise C2CError(f"give one non-empty brief part per sender ({len(senders)}), got {len(parts)}")
    r_span = BriefSpan.of(receiver, messages, PART_SEPARATOR.join(parts), chat)
    starts = [sum(len(p) + len(PART_SEPARATOR) for p in parts[:j]) for j in range(len(parts))]
    owner = [max(j for j, a in enumerate(starts) if a <= max(s, 0)) for s, _ in r_span.spans]
    emb = embeddings(receiver, r_span.brief_ids)
    geo = [(g.kv_heads, g.head_dim) for g in ModelGeometry.from_config(receiver.model.config).layers]
    n = r_span.end - r_span.start
    k_pre = [torch.zeros(h, n, d, device=receiver.device) for h, d in geo]
    v_new = [torch.zeros(h, n, d, device=receiver.device) for h, d in geo]
    entry = recompute.own_from
    states = torch.zeros(n, emb.shape[-1], device=receiver.device) if entry else None
    for j, (translator, sharer) in enumerate(senders):
        mine = [t for t, o in enumerate(owner) if o == j]
        if not mine:
            raise C2CError(f"brief part {j + 1} has no tokens of its own in {receiver.name}'s reading")
        spans = [(max(s - starts[j], 0), min(e - starts[j], len(parts[j]))) for s, e in
                 (r_span.spans[t] for t in mine)]  # fmt: skip
        read = sharer_reading(sharer, messages, parts[j], spans, receiver.device, chat, store,
                              translator.config.entry_sharer_layers(entry) if entry else None,
                              translator.config.sharer_depth(entry, recompute.own_to)
                              if entry and not recompute.selective else None)  # fmt: skip
        s_keys, s_values = read[:2]
        idx = torch.tensor(mine, device=receiver.device)
        if entry:
            states[idx] = translator.entry_state(entry, read[2], emb[idx])
        below = entry if entry and not (recompute.own_to or recompute.selective) else None  # only those below m
        written = translator(s_keys, s_values, emb[idx] if translator.uses_embedding else None, below)
        for i, (k, v) in enumerate(written):  # the recomputed layers among them are replaced below
            k_pre[i][:, idx], v_new[i][:, idx] = k, v
    prefix = PromptCache.empty(receiver).extend(receiver, r_span.ids[:r_span.start])
    pos = torch.arange(r_span.start, r_span.end, device=receiver.device)
    keys, values = [], []
    for i, (k, v) in enumerate(zip(k_pre, v_new)):
        cos, sin = rotary(receiver, i, pos)
        keys.append(torch.cat([prefix.keys[i], rotate(k, cos, sin).to(prefix.keys[i].dtype)], dim=1))
        values.append(torch.cat([prefix.values[i], v.to(prefix.values[i].dtype)], dim=1))
    if recompute.own_first:
        m = recompute.own_first
        keys[:m], values[:m] = lower_layers(receiver, r_span.ids[:r_span.end], m)
    top = recompute.top(len(keys))
    if recompute.selective:
        picked = pick_tokens(receiver, r_span.brief_ids, recompute.own_tokens, recompute.pick)
        keys, values = selected_layers(receiver, prefix, r_span.brief_ids, states, entry, top, keys, values, picked)
    elif entry:
        keys[entry:top], values[entry:top] = upper_layers(receiver, prefix, r_span.brief_ids, states, entry, top)
    meta = {"translated_from": ",".join(sharer.name for _, sharer in senders),
            "brief_tokens": [r_span.start, r_span.end], **recompute.meta()}  # fmt: skip
    cache = PromptCache(prefix.identity, r_span.ids[:r_span.end], keys, values, None, None, chat, meta)
    return cache, r_span
