"""Same-base cache reuse (DroidSpeak, arXiv 2411.02820), part 1: model A's prefill, kept for model B.

A `Capture` holds, for a left-padded batch of prompts, model A's KV cache and its E-cache (the hidden state
entering every layer), over every prompt token but the last (the last one is what B's generation feeds). It
can be saved as one safetensors file so that another process or host can reuse it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..alignment.tokens import encode, render
from ..errors import C2CError
from ..inference.pipeline import Prompt, left_pad, positions, to_messages
from ..kv import ModelGeometry, new_cache
from ..models.loading import LoadedModel
from .compat import decoder_layers


@dataclass
class Capture:
    model: str  # name of model A
    geometry: dict  # A's ModelGeometry, checked against B
    ids: torch.Tensor  # (B, L) the full left-padded prompts
    mask: torch.Tensor  # (B, L)
    keys: list[torch.Tensor]  # per layer (B, kv_heads, L - 1, head_dim), every position (sliding layers too)
    values: list[torch.Tensor]
    hidden: list[torch.Tensor]  # per layer (B, L - 1, hidden): the E-cache, input of each layer

    def bytes_per_token(self) -> dict[str, float]:
        tokens = int(self.mask[:, :-1].sum())
        kv = sum(t.numel() * t.element_size() for t in self.keys + self.values)
        e = sum(t.numel() * t.element_size() for t in self.hidden)
        per_pos = self.ids.shape[0] * (self.ids.shape[1] - 1)  # padded positions are stored too
        return {"kv": kv / per_pos, "e_cache": e / per_pos, "real_tokens": tokens}

    def save(self, path: Path) -> None:
        tensors = {"ids": self.ids.cpu(), "mask": self.mask.cpu()}
        for i, (k, v, h) in enumerate(zip(self.keys, self.values, self.hidden)):
            tensors[f"k.{i}"], tensors[f"v.{i}"], tensors[f"e.{i}"] = k.cpu(), v.cpu(), h.cpu()
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: t.contiguous() for k, t in tensors.items()}, tmp,
                  metadata={"model": self.model, "geometry": json.dumps(self.geometry)})  # fmt: skip
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu") -> "Capture":
        try:
            with safe_open(path, "pt", device=str(device)) as f:
                meta = f.metadata() or {}
                n = len(json.loads(meta["geometry"])["layers"])
                get = f.get_tensor
                return cls(meta["model"], json.loads(meta["geometry"]), get("ids"), get("mask"),
                           [get(f"k.{i}") for i in range(n)], [get(f"v.{i}") for i in range(n)],
                           [get(f"e.{i}") for i in range(n)])  # fmt: skip
        except FileNotFoundError:
            raise C2CError(f"capture file not found: {path}") from None
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as e:
            raise C2CError(f"not a cache2cache capture file: {path} ({e})") from None


def tokenize(model: LoadedModel, prompts: list[Prompt], chat: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    if not prompts:
        raise C2CError("no prompts given")
    rows = [encode(model.tokenizer, render(model.tokenizer, to_messages(p), chat))[0] for p in prompts]
    ids, mask, _ = left_pad(rows, model.tokenizer.pad_token_id, model.device)
    if ids.shape[1] > model.max_length:
        raise C2CError(f"prompt of {ids.shape[1]} tokens exceeds {model.name}'s context of {model.max_length}")
    return ids, mask


@torch.no_grad()
def capture(model: LoadedModel, prompts: list[Prompt], chat: bool = True) -> Capture:
    """Prefill `model` (A) on every prompt token but the last, keeping its KV cache and E-cache."""
    ids, mask = tokenize(model, prompts, chat)
    if ids.shape[1] < 2:
        raise C2CError("prompts must be at least two tokens long to have a cache to reuse")
    layers = decoder_layers(model.model)
    hidden: list[torch.Tensor | None] = [None] * len(layers)

    def keep(i):
        def hook(module, args, kwargs):
            hidden[i] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    handles = [layer.register_forward_pre_hook(keep(i), with_kwargs=True) for i, layer in enumerate(layers)]
    cache = new_cache(model.model.config, keep_full_history=True)
    try:
        model.model.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions(mask[:, :-1]),
                          past_key_values=cache, use_cache=True)  # fmt: skip
    finally:
        for h in handles:
            h.remove()
    geometry = ModelGeometry.from_config(model.model.config).to_dict()
    return Capture(model.name, geometry, ids, mask, [layer.keys for layer in cache.layers],
                   [layer.values for layer in cache.layers], hidden)  # fmt: skip
