"""The oracle cache-enrichment experiment: the kept cache lines up token by token with the question-only prompt,
and with no exemplars the enriched cache is exactly the question-only cache."""

import pytest
import torch

from cache2cache.alignment.tokens import encode, render
from cache2cache.errors import C2CError
from cache2cache.evaluation.enrichment import _kept_span, exemplar_turns, letter_logits
from cache2cache.evaluation.scoring import prompt_for
from cache2cache.evaluation.tasks import Item

from ..conftest import tiny

ITEMS = [Item(str(i), f"Which number is {w}?", ["one", "two", "three", "four"], i) for i, w in
         enumerate(["first", "second", "third", "fourth"])]  # fmt: skip


def test_kept_tokens_are_the_question_only_prompt():
    tok = tiny("tiny-llama").tokenizer
    q = prompt_for(ITEMS[0], "letter")
    ids_q = encode(tok, render(tok, q))[0]
    ids_f = encode(tok, render(tok, exemplar_turns(ITEMS[1:]) + q))[0]
    p, n = _kept_span(ids_q, ids_f)
    assert len(ids_f) > len(ids_q) and p + n == len(ids_q)
    assert ids_f[:p] + ids_f[len(ids_f) - n:] == ids_q


def test_enriched_without_exemplars_is_the_question_cache():
    m = tiny("tiny-llama")
    a = letter_logits(m, ITEMS[0], [], "question")
    b = letter_logits(m, ITEMS[0], [], "enriched")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_enriched_differs_from_both_other_settings():
    m, shots = tiny("tiny-llama"), exemplar_turns(ITEMS[1:])
    e = letter_logits(m, ITEMS[0], shots, "enriched")
    assert not torch.allclose(e, letter_logits(m, ITEMS[0], shots, "question"))
    assert not torch.allclose(e, letter_logits(m, ITEMS[0], shots, "few-shot"))


def test_sliding_window_models_are_refused():
    with pytest.raises(C2CError, match="sliding-window"):
        letter_logits(tiny("tiny-gemma3"), ITEMS[0], exemplar_turns(ITEMS[1:]), "enriched")
