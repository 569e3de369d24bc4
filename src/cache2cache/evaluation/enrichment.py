"""The C2C paper's oracle experiment on cache enrichment (Sec. 3.1): can a *better* cache, with no more entries,
raise accuracy? The receiver prefills few-shot exemplars followed by the question; the exemplars' entries are
then dropped, so it answers from a cache with exactly the question-only prompt's tokens, whose question entries
were computed with the exemplars in view. If that beats the question alone, enriching a cache (what a fuser
does) can help without lengthening it.

Three settings, scored with the letter protocol:
    question   the question-only prompt (the receiver-alone baseline)
    few-shot   exemplars and question all in the cache
    enriched   exemplars prefilled, then their entries dropped (kept entries keep their original positions)
"""

from __future__ import annotations

import torch

from ..alignment.tokens import encode, render
from ..errors import C2CError
from ..kv import ModelGeometry, new_cache
from ..models.loading import LoadedModel
from .scoring import ANSWER_PREFIX, LETTERS, pick_letter, prompt_for, question_block
from .tasks import Item

SETTINGS = ("question", "few-shot", "enriched")


def exemplar_turns(items: list[Item]) -> list[dict]:
    """Solved exemplars as earlier chat turns, in the letter format the question will be asked in."""
    turns = []
    for it in items:
        turns.append({"role": "user", "content": question_block(it)})
        turns.append({"role": "assistant", "content": f"{ANSWER_PREFIX} {LETTERS[int(it.answer)]}."})
    return turns


def _kept_span(ids_q: list[int], ids_f: list[int]) -> tuple[int, int]:
    """(p, n): the question-only prompt is the few-shot prompt's first p tokens plus its last n tokens."""
    p = 0
    while p < min(len(ids_q), len(ids_f)) and ids_q[p] == ids_f[p]:
        p += 1
    p = min(p, len(ids_q) - 1)  # at least the last token comes from the end
    n = len(ids_q) - p
    if ids_f[-n:] != ids_q[p:]:
        raise C2CError("the chat template does not render the question the same way with exemplars before it")
    return p, n


@torch.no_grad()
def letter_logits(model: LoadedModel, item: Item, shots: list[dict], setting: str) -> torch.Tensor:
    """(V,) logits of the answer letter for one item under one setting."""
    tok = model.tokenizer
    question = prompt_for(item, "letter")
    ids_q = encode(tok, render(tok, question))[0]
    ids_f = encode(tok, render(tok, shots + question))[0]
    dev = model.device
    if setting in ("question", "few-shot"):
        ids = torch.tensor([ids_q if setting == "question" else ids_f], device=dev)
        return model.model(input_ids=ids).logits[0, -1].float()
    if setting != "enriched":
        raise C2CError(f"unknown setting {setting!r}: choose one of {', '.join(SETTINGS)}")
    if any(layer.sliding_window for layer in ModelGeometry.from_config(model.model.config).layers):
        raise C2CError(f"{model.name} has sliding-window layers, whose caches cannot drop entries by position")
    p, n = _kept_span(ids_q, ids_f)
    full = torch.tensor([ids_f], device=dev)
    cache = new_cache(model.model.config)
    model.model(input_ids=full[:, :-1], past_key_values=cache, use_cache=True)
    keep = torch.cat([torch.arange(p), torch.arange(len(ids_f) - n, len(ids_f) - 1)]).to(dev)
    for layer in cache.layers:  # drop the exemplars' entries: same length as the question-only cache
        layer.keys, layer.values = layer.keys[:, :, keep], layer.values[:, :, keep]
    out = model.model(input_ids=full[:, -1:], position_ids=torch.tensor([[len(ids_f) - 1]], device=dev),
                      attention_mask=torch.ones(1, len(ids_q), dtype=torch.long, device=dev), past_key_values=cache)  # fmt: skip
    return out.logits[0, -1].float()


def predict(model: LoadedModel, item: Item, shots: list[dict], setting: str) -> int:
    return pick_letter(model.tokenizer, letter_logits(model, item, shots, setting), len(item.choices))
