"""Shared fixtures: tiny models are built once per test session (about a second each)."""

from __future__ import annotations

import functools
import os
import warnings

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*generation flags.*")

from cache2cache import Fuser, ModelGeometry, load_model  # noqa: E402
from cache2cache.caches.prompt_cache import PromptCache  # noqa: E402
from cache2cache.models.loading import LoadedModel  # noqa: E402

PAIRS = [
    ("tiny-llama", "tiny-llama-b"),  # same tokenizer: identity alignment
    ("tiny-llama", "tiny-qwen2"),  # cross tokenizer, shallower receiver, different head dims
    ("tiny-llama", "tiny-gemma3"),  # cross tokenizer, sliding-window sharer
    ("tiny-gemma3", "tiny-qwen2"),  # sliding-window receiver
]


@functools.lru_cache(maxsize=None)
def tiny(name: str) -> LoadedModel:
    return load_model(name)


def entering_states(model: LoadedModel, ids: list[int], layers: list[int]) -> list[torch.Tensor]:
    """(T, hidden) float32 per layer in `layers`: the hidden state entering that decoder layer over `ids`, read
    through the E-cache a PromptCache records (`hidden=True`): the reference the layer-input hooks are checked by."""
    hidden = PromptCache.empty(model, hidden=True).extend(model, ids).hidden
    return [hidden[m].float().cpu() for m in layers]


def make_fuser(receiver: LoadedModel, sharer: LoadedModel, seed: int = 0, **kwargs) -> Fuser:
    """A fuser with random (not zero) output weights so that it visibly changes the receiver."""
    torch.manual_seed(seed)
    kwargs.setdefault("zero_init", False)
    return Fuser.for_pair(
        receiver.name, ModelGeometry.from_config(receiver.model.config),
        sharer.name, ModelGeometry.from_config(sharer.model.config), **kwargs,
    )  # fmt: skip


PROMPTS = [
    "What is the capital of France? The correct answer is",
    "Hi",
    "def add(a, b):\n    return a + b  # adds two numbers, then explains 東京 and café 😀",
]


@pytest.fixture
def prompts() -> list[str]:
    return list(PROMPTS)
