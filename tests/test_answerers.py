"""One interface for the four ways to answer: each mode answers through `answerer()`, T2T's notes land where the
question says, and the direct modes are exactly the pipeline's."""

import pytest
import torch

from cache2cache import C2CModel, GenerateOptions
from cache2cache.errors import C2CError
from cache2cache.inference.answerers import T2T_REQUEST, Question, answerer
from cache2cache.inference.modes import ANSWER_MODES

from .conftest import make_fuser, tiny

OPTS = GenerateOptions(max_new_tokens=4)


def _model():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    return C2CModel(r, [s], [make_fuser(r, s)])


def test_direct_modes_are_the_pipeline():
    model = _model()
    for mode in ("receiver", "sharer", "c2c"):
        out = answerer(model, mode).generate(["What is a cache?"], OPTS)
        assert out.mode == mode and out.results[0].notes is None
        assert out.results[0].text == model.generate(["What is a cache?"], mode, OPTS).results[0].text
        logits = answerer(model, mode).next_token_logits(["Hi there"]).values
        assert torch.equal(logits, model.next_token_logits(["Hi there"], mode))


def test_t2t_asks_the_sharer_for_notes_and_answers_with_them():
    model = _model()
    seen = []
    question = Question("What is a cache?", notes_request="Write notes about caches.",
                        with_notes=lambda notes: seen.append(notes) or f"Notes: {notes}\nQ: What is a cache?")
    out = answerer(model, "t2t", note_tokens=3).generate([question], OPTS)
    notes = model.generate(["Write notes about caches."], "sharer", GenerateOptions(max_new_tokens=3)).results[0].text
    assert out.mode == "t2t" and out.results[0].notes == notes and seen == [notes]
    direct = model.generate([f"Notes: {notes}\nQ: What is a cache?"], "receiver", OPTS).results[0].text
    assert out.results[0].text == direct and out.timings.t2t_sharer_s > 0
    # defaults: the prompt plus the request; the notes appended to the prompt
    default = answerer(model, "t2t", note_tokens=3).logprobs(["Name a prime."], [[" 2", " 4"]])
    notes = model.generate([f"Name a prime.\n\n{T2T_REQUEST}"], "sharer", GenerateOptions(max_new_tokens=3))
    with_notes = f"Name a prime.\n\nNotes from another model:\n{notes.results[0].text.strip()}"
    want, _ = model.continuation_logprobs([with_notes], [[" 2", " 4"]], "receiver")
    assert default.values == want


def test_exact_notes_and_mode_errors():
    model = _model()
    _, notes, _ = answerer(model, "t2t", note_tokens=5, exact_notes=True).prepare([Question("Hi")])
    fixed = model.generate([f"Hi\n\n{T2T_REQUEST}"], "sharer", GenerateOptions(max_new_tokens=5, min_new_tokens=5))
    assert notes == [fixed.results[0].text] and fixed.results[0].new_tokens == 5  # benchmarks: a fixed note length
    assert set(ANSWER_MODES) == {"receiver", "sharer", "t2t", "t2t_blind", "c2c", "translated"}
    with pytest.raises(C2CError, match="unknown mode"):
        answerer(model, "telepathy")
    with pytest.raises(C2CError, match="needs a sharer"):
        answerer(C2CModel(tiny("tiny-llama")), "t2t")
