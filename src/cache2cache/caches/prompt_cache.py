"""`PromptCache`: one model's prefilled text, as an object with a type, an identity and a file format.

It is what agents pass each other instead of text, what the prefix store keeps, and what same-base reuse reads:

    token_ids      the tokens the cache covers (every one of them has its keys and values)
    messages       the conversation those tokens render (what token alignment to another model needs), or None
    keys, values   per layer (kv_heads, T, head_dim); sliding-window layers keep every position
    hidden         optional, per layer (T, hidden): the state entering each layer (the E-cache of same-base reuse)
    identity       the model that computed it (name, fingerprint, geometry): loading it into another is an error

File format: one safetensors file holding one or more caches (`save_caches`), tensors `{cache}.k.{layer}`,
`{cache}.v.{layer}` (and `.h.`), the rest as JSON in its metadata, so a cache can be written to disk or sent over
the wire (`to_bytes`) and is never unpickled. With a key, the file is wrapped in a signed manifest (signing.py).

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
from ..models.loading import LoadedModel, decoder_layers
from .batched import stack_caches
from .identity import ModelIdentity, identity_of
from .signing import (
    CALIBRATION_TEXT,
    CacheKeys,
    ScaleProfile,
    is_signed,
    open_signed,
    sign,
    token_hash,
    validate,
)

FORMAT = "cache2cache.caches/1"


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
        if model.is_skeleton:
            raise C2CError(f"{model.name} has no weights in this process: its cache must cover the whole prompt "
                           f"({len(new_ids)} token(s) are missing); get it from the process that runs {model.name}")
        if len(self) + len(new_ids) > model.max_length:
            raise C2CError(f"{len(self) + len(new_ids)} tokens exceed {model.name}'s context of {model.max_length}")
        cache = self.to_transformers(model)
        ids = torch.tensor([new_ids], device=model.device)
        pos = torch.arange(len(self), len(self) + len(new_ids), device=model.device)[None]
        mask = torch.ones(1, len(self) + len(new_ids), dtype=torch.long, device=model.device)
        captured = layer_inputs(model) if self.hidden is not None else None
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

    def to_bytes(self, dtype: torch.dtype | None = None, key: CacheKeys | None = None) -> bytes:
        """The safetensors serialisation; `dtype=torch.bfloat16` halves a float32 cache on the wire. With `key`,
        wrapped in a signed manifest (signing.py) that `from_bytes(..., key=...)` verifies."""
        data = caches_to_bytes([self], dtype)
        if key is None:
            return data
        facts = {"model": self.identity.to_dict(), "tokens": len(self), "token_hash": token_hash(self.token_ids),
                 "dtype": str(dtype or self.dtype).removeprefix("torch.")}  # fmt: skip
        return sign(data, facts, key)

    @classmethod
    def from_bytes(cls, data: bytes, device: str | torch.device = "cpu", key: CacheKeys | None = None,
                   max_bytes: int | None = None) -> "PromptCache":  # fmt: skip
        """Parse a cache file. With `key` it must be signed and is verified (signature, payload hash, expiry,
        the manifest's facts) before its tensors are parsed; without, a signed cache is refused."""
        manifest = None
        if key is not None:
            data, manifest = open_signed(data, key, max_bytes=max_bytes)
        elif is_signed(data):
            raise C2CError("this cache is signed: verifying it needs the cache key")
        caches = caches_from_bytes(data, device)
        if len(caches) != 1:
            raise C2CError(f"expected one cache, found {len(caches)} (use load_caches for a batch)")
        if manifest is not None:
            validate(caches[0], caches[0].identity, manifest=manifest)
        return caches[0]

    def save(self, path: str | Path, dtype: torch.dtype | None = None, key: CacheKeys | None = None) -> Path:
        return write_bytes(Path(path), self.to_bytes(dtype, key))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", key: CacheKeys | None = None) -> "PromptCache":
        return cls.from_bytes(_read(path), device, key)

    def _header(self) -> dict:
        return {"identity": self.identity.to_dict(), "token_ids": self.token_ids, "messages": self.messages,
                "chat": self.chat, "meta": self.meta, "hidden": self.hidden is not None}  # fmt: skip


def caches_to_bytes(caches: list[PromptCache], dtype: torch.dtype | None = None) -> bytes:
    """One safetensors buffer holding one or more caches: tensors `{j}.k.{i}`, `{j}.v.{i}` (and `{j}.h.{i}`) for
    cache j, layer i; the rest as JSON in its metadata."""
    tensors = {}
    for j, c in enumerate(caches):
        for i, (k, v) in enumerate(zip(c.keys, c.values)):
            tensors[f"{j}.k.{i}"], tensors[f"{j}.v.{i}"] = k, v
        for i, h in enumerate(c.hidden or []):
            tensors[f"{j}.h.{i}"] = h
    tensors = {n: t.detach().to("cpu", dtype or t.dtype).contiguous() for n, t in tensors.items()}
    header = {"format": FORMAT, "caches": [c._header() for c in caches]}
    return save(tensors, metadata={"cache2cache": json.dumps(header)})


def caches_from_bytes(data: bytes, device: str | torch.device = "cpu") -> list[PromptCache]:
    try:
        tensors = load(data)
        header = json.loads(_metadata(data)["cache2cache"])
        if header.get("format") != FORMAT:
            raise ValueError(f"unknown format {header.get('format')!r}")
        out = []
        for j, h in enumerate(header["caches"]):
            identity = ModelIdentity.from_dict(h["identity"])
            n = identity.geometry.num_layers
            get = lambda kind, i: tensors[f"{j}.{kind}.{i}"].to(device)  # noqa: E731
            hidden = [get("h", i) for i in range(n)] if h["hidden"] else None
            out.append(PromptCache(identity, [int(t) for t in h["token_ids"]], [get("k", i) for i in range(n)],
                                   [get("v", i) for i in range(n)], hidden, h.get("messages"),
                                   bool(h.get("chat", True)), dict(h.get("meta") or {})))  # fmt: skip
        return out
    except C2CError:
        raise
    except (SafetensorError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise C2CError(f"not a cache2cache cache file ({type(e).__name__}: {e})") from None


def save_caches(path: str | Path, caches: list[PromptCache], dtype: torch.dtype | None = None) -> Path:
    """Write caches to one safetensors file, atomically."""
    return write_bytes(Path(path), caches_to_bytes(caches, dtype))


def load_caches(path: str | Path, device: str | torch.device = "cpu") -> list[PromptCache]:
    return caches_from_bytes(_read(path), device)


def _read(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise C2CError(f"cache file not found: {path}")
    return path.read_bytes()


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


def measure_scale(model: LoadedModel) -> ScaleProfile:
    """The largest |key| and |value| per layer `model` produces on the calibration text: what an imported cache
    of it may hold (`validate`)."""
    cache = PromptCache.prefill(model, CALIBRATION_TEXT, chat=False)
    return ScaleProfile(identity_of(model).fingerprint, tuple(float(k.float().abs().max()) for k in cache.keys),
                        tuple(float(v.float().abs().max()) for v in cache.values))  # fmt: skip


def layer_inputs(model: LoadedModel) -> _LayerInputs:
    """Start recording the input of every decoder layer of `model` (call `.close()` when done)."""
    return _LayerInputs(decoder_layers(model.model))
