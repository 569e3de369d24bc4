"""The shape of a model's KV cache, read from its config, and the transformers Cache objects we fill.

A fuser is built for one receiver geometry and one sharer geometry; recording them in the fuser's config is
what lets `from_pretrained` refuse a fuser for another pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import DynamicCache, PretrainedConfig


@dataclass(frozen=True)
class LayerGeometry:
    kv_heads: int
    head_dim: int
    sliding_window: int | None  # None for full-attention layers

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class ModelGeometry:
    """Everything about a model's cache that a fuser depends on."""

    arch: str
    vocab_size: int
    layers: tuple[LayerGeometry, ...]

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> "ModelGeometry":
        cfg = config.get_text_config()
        n_layers = cfg.num_hidden_layers
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        types = getattr(cfg, "layer_types", None) or ["full_attention"] * n_layers
        window = getattr(cfg, "sliding_window", None)
        layers = tuple(
            LayerGeometry(kv_heads, head_dim, window if t == "sliding_attention" else None) for t in types
        )
        return cls(arch=cfg.model_type, vocab_size=cfg.vocab_size, layers=layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict:
        return {"arch": self.arch, "vocab_size": self.vocab_size, "layers": [asdict(g) for g in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelGeometry":
        return cls(d["arch"], d["vocab_size"], tuple(LayerGeometry(**g) for g in d["layers"]))


def new_cache(config: PretrainedConfig, keep_full_history: bool = False) -> DynamicCache:
    """A DynamicCache laid out for `config` (sliding-window layers included).

    `keep_full_history=True` makes sliding-window layers keep every position instead of the last
    window - 1: the sharer's cache is read at arbitrary aligned positions, not decoded from.
    """
    cache = DynamicCache(config=config)
    if keep_full_history:
        for layer in cache.layers:
            if getattr(layer, "is_sliding", False):
                layer.activate_past_recording()
    return cache
