"""`PromptCache`: one model's prefilled text, as an object with a type, an identity and a file format.

It is what agents pass each other instead of text, what the prefix store keeps, and what same-base reuse reads:

    token_ids      the tokens the cache covers (every one of them has its keys and values)
    messages       the conversation those tokens render (what token alignment to another model needs), or None
    keys, values   per layer (kv_heads, T, head_dim); sliding-window layers keep every position
    hidden         optional, per layer (T, hidden): the state entering each layer (the E-cache of same-base reuse)
    identity       the model that computed it (name, fingerprint, geometry): loading it into another is an error

File format: one safetensors file, tensors `k.{i}`, `v.{i}` (and `h.{i}`), the rest as JSON in its metadata, so
a cache can be written to disk or sent over the wire (`to_bytes`) and is never unpickled.

A cache covers exactly its tokens. Extending it runs the model over the new tokens only, from the stored keys
and values; since every position is kept, a cache can also be cut back to any prefix (`truncate`), which is how
the prefix store reuses a document's cache for a question that starts with the document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from ..alignment.tokens import Messages, encode, render
from ..atomic import write_bytes
from ..errors import C2CError
from ..kv import new_cache
from ..models.loading import LoadedModel
from .identity import ModelIdentity, identity_of

FORMAT = "cache2cache.prompt_cache/1"


@dataclass
class PromptCache:
    identity: ModelIdentity
    token_ids: list[int]
    keys: list[torch.Tensor]  # per layer (kv_heads, T, head_dim)
    values: list[torch.Tensor]
    hidden: list[torch.Tensor] | None = None  # per layer (T, hidden_size), the input of each layer
    messages: Messages | None = None
    chat: bool = True  # whether `messages` were rendered with the chat template
    meta: dict = field(default_factory=dict)  # free-form, JSON-serialisable (who sent it, for what)

    def __post_init__(self) -> None:
        n = self.identity.geometry.num_layers
        if len(self.keys) != n or len(self.values) != n:
            raise C2CError(f"a cache of {self.identity.name} needs {n} layers of keys and values")
        if any(k.shape[-2] != len(self.token_ids) for k in self.keys + self.values):
            raise C2CError("every layer of a cache must cover its token ids exactly")

    # ---- size ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        tensors = self.keys + self.values + (self.hidden or [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def bytes_per_token(self) -> float:
        return self.nbytes / max(1, len(self))

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    # ---- building -----------------------------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def prefill(cls, model: LoadedModel, prompt: str | Messages, *, chat: bool = True, hidden: bool = False,
                drop_last: bool = False) -> "PromptCache":  # fmt: skip
        """Run `model` over a prompt (text, or chat messages rendered with its template). `drop_last` leaves the
        final token out (generation feeds it), as the receiver's side of C2C does."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        ids = encode(model.tokenizer, render(model.tokenizer, messages, chat))[0]
        if drop_last:
            ids = ids[:-1]
        empty = cls.empty(model, hidden=hidden)
        empty.messages, empty.chat = messages, chat
        return empty.extend(model, ids)

    @classmethod
    def empty(cls, model: LoadedModel, hidden: bool = False) -> "PromptCache":
        ident = identity_of(model)
        dtype, device = model.model.dtype, model.device
        kv = [torch.zeros(g.kv_heads, 0, g.head_dim, dtype=dtype, device=device) for g in ident.geometry.layers]
        size = model.model.config.get_text_config().hidden_size
        h = [torch.zeros(0, size, dtype=dtype, device=device) for _ in kv] if hidden else None
        return cls(ident, [], kv, [t.clone() for t in kv], h)

    @torch.no_grad()
    def extend(self, model: LoadedModel, new_ids: list[int], messages: Messages | None = None) -> "PromptCache":
        """A new cache covering these tokens plus `new_ids`, computed from this one: the model runs over the new
        tokens only. `messages` describes the whole extended text, when known."""
        self.check_model(model)
        if not new_ids:
            return self.truncate(len(self), messages)
        if len(self) + len(new_ids) > model.max_length:
            raise C2CError(f"{len(self) + len(new_ids)} tokens exceed {model.name}'s context of {model.max_length}")
        cache = self.to_transformers(model)
        ids = torch.tensor([new_ids], device=model.device)
        pos = torch.arange(len(self), len(self) + len(new_ids), device=model.device)[None]
        mask = torch.ones(1, len(self) + len(new_ids), dtype=torch.long, device=model.device)
        captured = _capture_layer_inputs(model) if self.hidden is not None else None
        try:
            model.model.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                              use_cache=True)  # fmt: skip
        finally:
            if captured is not None:
                captured.close()
        hidden = None
        if captured is not None:
            hidden = [torch.cat([old, new[0].to(old.dtype)]) for old, new in zip(self.hidden, captured.states)]
        return PromptCache(self.identity, self.token_ids + list(new_ids), [layer.keys[0] for layer in cache.layers],
                           [layer.values[0] for layer in cache.layers], hidden,
                           messages if messages is not None else self.messages, self.chat, dict(self.meta))  # fmt: skip

    def truncate(self, n: int, messages: Messages | None = None) -> "PromptCache":
        """The cache of the first `n` tokens (a view: no copy)."""
        if not 0 <= n <= len(self):
            raise C2CError(f"cannot cut a {len(self)}-token cache to {n} tokens")
        hidden = [h[:n] for h in self.hidden] if self.hidden is not None else None
        return PromptCache(self.identity, self.token_ids[:n], [k[:, :n] for k in self.keys],
                           [v[:, :n] for v in self.values], hidden, messages, self.chat, dict(self.meta))  # fmt: skip

    # ---- using it -----------------------------------------------------------------------------------------

    def check_model(self, model: LoadedModel) -> None:
        self.identity.check(identity_of(model), "this cache")

    def to_transformers(self, model: LoadedModel):
        """A batch-1 transformers DynamicCache holding this cache, ready for `model`'s forward or `generate()`.
        Sliding-window layers keep every position and expose only their window to new tokens."""
        self.check_model(model)
        return stack_caches([self], model)[0]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "PromptCache":
        def move(ts):
            return [t.to(device=device, dtype=dtype) for t in ts] if ts is not None else None

        return PromptCache(self.identity, list(self.token_ids), move(self.keys), move(self.values), move(self.hidden),
                           self.messages, self.chat, dict(self.meta))  # fmt: skip

    # ---- file format --------------------------------------------------------------------------------------

    def to_bytes(self, dtype: torch.dtype | None = None) -> bytes:
        """The safetensors serialisation; `dtype=torch.bfloat16` halves a float32 cache on the wire."""
        tensors = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            tensors[f"k.{i}"], tensors[f"v.{i}"] = k, v
        for i, h in enumerate(self.hidden or []):
            tensors[f"h.{i}"] = h
        tensors = {n: t.detach().to("cpu", dtype or t.dtype).contiguous() for n, t in tensors.items()}
        header = {"format": FORMAT, "identity": self.identity.to_dict(), "token_ids": self.token_ids,
                  "messages": self.messages, "chat": self.chat, "meta": self.meta,
                  "hidden": self.hidden is not None}  # fmt: skip
        return save(tensors, metadata={"cache2cache": json.dumps(header)})

    @classmethod
    def from_bytes(cls, data: bytes, device: str | torch.device = "cpu") -> "PromptCache":
        try:
            tensors = load(data)
            header = json.loads(_metadata(data)["cache2cache"])
            if header.get("format") != FORMAT:
                raise ValueError(f"unknown format {header.get('format')!r}")
            identity = ModelIdentity.from_dict(header["identity"])
            n = identity.geometry.num_layers
            hidden = [tensors[f"h.{i}"].to(device) for i in range(n)] if header["hidden"] else None
            return cls(identity, [int(t) for t in header["token_ids"]], [tensors[f"k.{i}"].to(device) for i in range(n)],
                       [tensors[f"v.{i}"].to(device) for i in range(n)], hidden, header.get("messages"),
                       bool(header.get("chat", True)), dict(header.get("meta") or {}))  # fmt: skip
        except C2CError:
            raise
        except (SafetensorError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise C2CError(f"not a cache2cache prompt cache ({type(e).__name__}: {e})") from None

    def save(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        return write_bytes(Path(path), self.to_bytes(dtype))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "PromptCache":
        path = Path(path)
        if not path.is_file():
            raise C2CError(f"cache file not found: {path}")
        return cls.from_bytes(path.read_bytes(), device)


def _metadata(data: bytes) -> dict:
    """The metadata of a safetensors buffer (its 8-byte length, then a JSON header)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


class _LayerInputs:
    """Forward pre-hooks that record the hidden state entering every decoder layer (the E-cache)."""

    def __init__(self, layers) -> None:
        self.states: list[torch.Tensor] = [torch.empty(0)] * len(layers)
        self.handles = [layer.register_forward_pre_hook(self._keep(i), with_kwargs=True)
                        for i, layer in enumerate(layers)]  # fmt: skip

    def _keep(self, i: int):
        def hook(module, args, kwargs):
            self.states[i] = (args[0] if args else kwargs["hidden_states"]).detach()

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _capture_layer_inputs(model: LoadedModel) -> _LayerInputs:
    from ..reuse.compat import decoder_layers

    return _LayerInputs(decoder_layers(model.model))


def stack_caches(caches: list[PromptCache], model: LoadedModel) -> tuple[object, torch.Tensor]:
    """Left-pad single caches into one batched DynamicCache for `model`, with its (B, T) attention mask. Padded
    positions hold zeros and are masked out; positions come from the mask, as everywhere in the pipeline."""
    if not caches:
        raise C2CError("no caches to stack")
    width = max(len(c) for c in caches)
    device = model.device
    mask = torch.zeros(len(caches), width, dtype=torch.long, device=device)
    for b, c in enumerate(caches):
        mask[b, width - len(c):] = 1
    cache = new_cache(model.model.config, keep_full_history=True)
    for i, layer in enumerate(cache.layers):
        ks, vs = [], []
        for c in caches:
            k, v = c.keys[i].to(device), c.values[i].to(device)
            pad = width - len(c)
            ks.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
            vs.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
        k, v = torch.stack(ks), torch.stack(vs)
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = width
    return cache, mask
