"""cache2cache: language models that talk through their KV caches.

    from cache2cache import load_model, Fuser, C2CModel
    receiver, sharer = load_model("tiny-llama"), load_model("tiny-qwen2")
    fuser = Fuser.for_pair(receiver.name, ..., sharer.name, ...)  # or Fuser.from_pretrained(dir)
    C2CModel(receiver, [sharer], [fuser]).generate(["What is a KV cache?"])

The names below are imported on first use (torch and transformers take seconds to import), so `c2c --help` and
light tools start fast.
"""

from __future__ import annotations

import importlib

from .version import __version__

_LAZY = {
    "C2CError": ".errors",
    "FuserConfig": ".fuser.config",
    "Fuser": ".fuser.model",
    "C2CModel": ".inference.pipeline",
    "GenerateOptions": ".inference.pipeline",
    "ModelGeometry": ".kv",
    "LoadedModel": ".models.loading",
    "load_model": ".models.loading",
    "Translator": ".translation.translator",
    "Briefed": ".inference.batching",
    "PromptCache": ".caches.prompt_cache",
    "CacheKeys": ".caches.signing",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cache2cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
