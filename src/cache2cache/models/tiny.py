"""Tiny randomly-initialised models with tokenizers of their own, built locally in about a second.

They exist so that every code path (cross-tokenizer alignment, GQA, different head dims and depths, Gemma-3
sliding-window layers) is tested without downloading anything. Three tokenizer families are trained here on
a small fixed corpus, deterministically, so the same name always gives the same model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

# A mix of prose, code, numbers and non-ASCII text, so the tokenizers learn merges of every kind.
_CORPUS = """
The quick brown fox jumps over the lazy dog. A language model reads text as tokens and keeps a cache of
keys and values for every layer. Cache-to-cache communication lets one model read another model's cache.
Question: What is the capital of France? The correct answer is Paris. Photosynthesis turns light into energy.
Water boils at 100 degrees Celsius at sea level; ice melts at 0 degrees. 12 + 30 = 42, and 7 * 6 = 42 too.
def add(a, b):
    return a + b

for i in range(10):
    print(i ** 2)  # squares
class Cache:
    def __init__(self):
        self.keys = []
{"role": "user", "content": "hello"} [1, 2, 3] <tag attr="x">text</tag> path/to/file.py x = y if z else w
Le renard brun saute par-dessus le chien paresseux. Über den Wolken muss die Freiheit wohl grenzenlos sein.
café naïve résumé façade — “quotes” ‘single’ … 東京は日本の首都です。 Привет, мир! 😀 🚀 ✓ ∑ π ≈ 3.14159
Science: atoms, molecules, cells, planets, stars. History: empires, wars, treaties. Math: algebra, geometry.
"""

_SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]


@dataclass(frozen=True)
class _TokenizerRecipe:
    vocab_size: int
    pre_tokenizer: Callable[[], pre_tokenizers.PreTokenizer]
    specials: tuple[str, ...]
    chat_template: str
    bos: str
    eos: str


_ZEPHYR_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_TOKENIZERS: dict[str, _TokenizerRecipe] = {
    # GPT-2 style byte-level BPE.
    "llama": _TokenizerRecipe(
        vocab_size=400,
        pre_tokenizer=lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
        specials=("<|user|>", "<|assistant|>", "<|system|>"),
        chat_template=_ZEPHYR_TEMPLATE,
        bos="<s>",
        eos="</s>",
    ),
    # Byte-level BPE with digits split one by one and a larger vocabulary (like Qwen).
    "qwen2": _TokenizerRecipe(
        vocab_size=560,
        pre_tokenizer=lambda: pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        ),
        specials=("<|im_start|>", "<|im_end|>"),
        chat_template=_CHATML_TEMPLATE,
        bos="<|im_start|>",
        eos="<|im_end|>",
    ),
    # Whitespace-and-punctuation split before byte-level BPE: word pieces never cross a space (like SentencePiece).
    "gemma3": _TokenizerRecipe(
        vocab_size=480,
        pre_tokenizer=lambda: pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(pattern=" ", behavior="merged_with_next"),
                pre_tokenizers.Punctuation(),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        specials=("<start_of_turn>", "<end_of_turn>"),
        chat_template=_GEMMA_TEMPLATE,
        bos="<s>",
        eos="<end_of_turn>",
    ),
}


@functools.lru_cache(maxsize=None)
def _tokenizer_json(family: str) -> str:
    recipe = _TOKENIZERS[family]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = recipe.pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=_SPECIALS + list(recipe.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A fresh tokenizer of one of the three tiny families (`llama`, `qwen2`, `gemma3`)."""
    recipe = _TOKENIZERS[family]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(family)),
        bos_token=recipe.bos,
        eos_token=recipe.eos,
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=list(recipe.specials),
    )
    tokenizer.chat_template = recipe.chat_template
    tokenizer.name_or_path = f"tiny-{family}"
    return tokenizer


def _common(tokenizer: PreTrainedTokenizerFast) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.1,  # larger than usual so random models give varied, non-degenerate logits
    )


def _llama_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, **_common(tok),
    )  # fmt: skip


def _qwen2_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return Qwen2Config(
        hidden_size=96, intermediate_size=160, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=1, head_dim=24, **_common(tok),
    )  # fmt: skip


def _gemma3_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    # A sliding window of 8 so that ordinary test prompts overflow it.
    return Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=5, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                     "full_attention"],
        **_common(tok),
    )  # fmt: skip


@dataclass(frozen=True)
class TinySpec:
    family: str
    config: Callable[[PreTrainedTokenizerFast], PretrainedConfig]
    seed: int
    perturb: float = 0.0  # > 0: add seeded Gaussian noise of this scale, a stand-in for a fine-tune


TINY_MODELS: dict[str, TinySpec] = {
    "tiny-llama": TinySpec("llama", _llama_config, seed=1),
    "tiny-qwen2": TinySpec("qwen2", _qwen2_config, seed=2),
    "tiny-gemma3": TinySpec("gemma3", _gemma3_config, seed=3),
    # Same architecture and tokenizer as tiny-llama, other weights: an unrelated model sharing a tokenizer.
    "tiny-llama-b": TinySpec("llama", _llama_config, seed=11),
    # tiny-llama with its weights nudged: a same-base "fine-tune" for cache reuse.
    "tiny-llama-ft": TinySpec("llama", _llama_config, seed=1, perturb=0.02),
}


def build_tiny(name: str) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """Build a tiny model and its tokenizer, identically for the same name (global RNG left untouched)."""
    spec = TINY_MODELS[name]
    tokenizer = tiny_tokenizer(spec.family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(spec.config(tokenizer), dtype=torch.float32)
        if spec.perturb:
            noise = torch.Generator().manual_seed(spec.seed + 1000)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=noise) * spec.perturb)
    model.config.name_or_path = name
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer
