"""The ways to answer (modes.py lists them), behind one small interface: receiver alone, sharer alone,
text-to-text, C2C, translated, and their controls.

`c2c generate`, `c2c eval`, `c2c bench`, the agents and the server all ask an `Answerer` (made by `answerer()`)
and never branch on the mode themselves, so text-to-text lives here and nowhere else.

An answerer takes `Question`s: the prompt to answer and, for text-to-text, how to ask the sharer for notes
and where the notes go (defaults: the prompt plus a request for notes; the notes appended to the prompt).
Evaluation passes its own, so that notes land inside its scoring format.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..alignment.tokens import Messages
from ..errors import C2CError
from .batching import (
    Briefed,
    GenerateOptions,
    GenerationOutput,
    Prompt,
    Timings,
    sharer_messages,
    to_messages,
)
from .modes import MODES, get_mode
from .pipeline import C2CModel
from .wire import wire_bytes

BLIND_REQUEST = ("Write brief notes on the text above for another model that will be asked questions about it and "
                 "will not see the text: keep the names, numbers, dates and facts it states.")
T2T_REQUEST = ("Briefly explain the facts and reasoning needed to answer this question, for another model that "
               "will choose the answer.")


def _last_user_text(messages: Messages) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])


def _default_request(prompt: Prompt) -> Prompt:
    """The sharer's last user message (with any brief) and the request for notes."""
    return [{"role": "user", "content": f"{_last_user_text(sharer_messages(prompt)).strip()}\n\n{T2T_REQUEST}"}]


def _default_with_notes(prompt: Prompt, notes: str) -> Prompt:
    text = f"{_last_user_text(to_messages(prompt)).strip()}\n\nNotes from another model:\n{notes.strip()}"
    return text if isinstance(prompt, str) else [{"role": "user", "content": text}]


@dataclass
class Question:
    prompt: Prompt
    notes_request: Prompt | None = None  # what the sharer is asked in t2t (default: the prompt + T2T_REQUEST)
    with_notes: Callable[[str], Prompt] | None = None  # the prompt with the sharer's notes in it

    def request(self) -> Prompt:
        return self.notes_request if self.notes_request is not None else _default_request(self.prompt)

    def answered_with(self, notes: str) -> Prompt:
        return self.with_notes(notes) if self.with_notes is not None else _default_with_notes(self.prompt, notes)


@dataclass
class Scores:
    """Scores for a batch of questions, the phase timings, and text-to-text's notes (None in other modes)."""

    values: list | torch.Tensor
    timings: Timings
    notes: list[str | None]


def _questions(items: Sequence[Question | Prompt]) -> list[Question]:
    return [q if isinstance(q, Question) else Question(q) for q in items]


class Answerer:
    """Answers in one mode through a C2CModel. Subclasses change only how prompts are prepared."""

    def __init__(self, model: C2CModel, mode: str) -> None:
        self.model, self.mode = model, mode
        self.answer_mode = MODES[mode].runs  # the C2CModel mode that reads the final prompts

    def prepare(self, questions: list[Question]) -> tuple[list[Prompt], list[str | None], Timings]:
        """The prompts the answering model reads, any notes written for them, and what writing them cost."""
        return [q.prompt for q in questions], [None] * len(questions), Timings()

    def final_prompt(self, question: Question, notes: str | None) -> Prompt:
        """What the answering model read for `question`, given the notes written for it (if any)."""
        return question.answered_with(notes) if notes is not None else question.prompt

    def sent(self, question: Question | Prompt, notes: str | None) -> int:
        """Bytes that crossed to the receiver to answer `question` (wire.py)."""
        q = _questions([question])[0]
        return wire_bytes(self.model, self.mode, q.prompt, self.final_prompt(q, notes), notes)

    def running(self) -> contextlib.AbstractContextManager:
        """Held while the model answers (the control mode changes what the pipeline fuses)."""
        return contextlib.nullcontext()

    def generate(self, questions: Sequence[Question | Prompt], options: GenerateOptions | None = None,
                 streamer=None, stopping_criteria=None) -> GenerationOutput:  # fmt: skip
        prompts, notes, extra = self.prepare(_questions(questions))
        with self.running():
            out = self.model.generate(prompts, self.answer_mode, options, streamer=streamer,
                                      stopping_criteria=stopping_criteria)  # fmt: skip
        out.mode, out.timings.t2t_sharer_s = self.mode, extra.total_s
        for r, n in zip(out.results, notes):
            r.notes = n
        return out

    def logprobs(self, questions: Sequence[Question | Prompt], continuations: Sequence[Sequence[str]]) -> Scores:
        """Summed log-probability of each continuation after each question (cloze scoring)."""
        prompts, notes, extra = self.prepare(_questions(questions))
        with self.running():
            values, timings = self.model.continuation_logprobs(prompts, continuations, self.answer_mode)
        timings.t2t_sharer_s = extra.total_s
        return Scores(values, timings, notes)

    def next_token_logits(self, questions: Sequence[Question | Prompt]) -> Scores:
        """(B, V) logits of the token after each question (letter scoring)."""
        prompts, notes, extra = self.prepare(_questions(questions))
        with self.running():
            logits, timings = self.model.next_token_logits_timed(prompts, self.answer_mode)
        timings.t2t_sharer_s = extra.total_s
        return Scores(logits, timings, notes)


class TextToText(Answerer):
    """The sharer writes notes (up to `note_tokens`; exactly that many with `exact_notes`, as benchmarks want);
    the receiver answers with the notes in its prompt."""

    def __init__(self, model: C2CModel, note_tokens: int = 64, exact_notes: bool = False) -> None:
        super().__init__(model, "t2t")
        self.notes = GenerateOptions(max_new_tokens=note_tokens, min_new_tokens=note_tokens if exact_notes else 0)

    def prepare(self, questions: list[Question]) -> tuple[list[Prompt], list[str | None], Timings]:
        out = self.model.generate([self.request(q) for q in questions], "sharer", self.notes)
        notes = [r.text for r in out.results]
        return [self.final_prompt(q, n) for q, n in zip(questions, notes)], list(notes), out.timings

    def request(self, question: Question) -> Prompt:
        return question.request()


def _briefed(question: Question) -> Briefed | None:
    """The question's prompt if it has a brief (a row without one gets no message: the receiver alone)."""
    p = question.prompt
    return p if isinstance(p, Briefed) and p.brief.strip() else None


class BlindNotes(TextToText):
    """The same message as text: the sharer reads only the brief (never the question) and writes notes about it
    within the token budget, as an agent hands over notes; the receiver reads the notes where the brief would be,
    then the question. The text arm beside mode translated (same sender, same reading, same place)."""

    def __init__(self, model: C2CModel, note_tokens: int = 64, exact_notes: bool = False) -> None:
        super().__init__(model, note_tokens, exact_notes)
        self.mode = "t2t_blind"

    def prepare(self, questions: list[Question]) -> tuple[list[Prompt], list[str | None], Timings]:
        rows = [i for i, q in enumerate(questions) if _briefed(q)]
        notes: list[str | None] = [None] * len(questions)
        cost = Timings()
        if rows:
            out = self.model.generate([self.request(questions[i]) for i in rows], "sharer", self.notes)
            for i, r in zip(rows, out.results):
                notes[i] = r.text
            cost = out.timings
        return [self.final_prompt(q, n) for q, n in zip(questions, notes)], notes, cost

    def request(self, question: Question) -> Prompt:
        return [{"role": "user", "content": f"{_briefed(question).brief.strip()}\n\n{BLIND_REQUEST}"}]

    def final_prompt(self, question: Question, notes: str | None) -> Prompt:
        briefed = _briefed(question)
        if briefed is None or notes is None:
            return question.prompt
        return sharer_messages(Briefed(briefed.prompt, notes or " "))


class Mismatched(Answerer):
    """C2C where each question is fused with the sharer's cache of the next question of its batch: a fuser whose
    gain over the receiver survives this has learned a prior, not to read the sharer. Needs batches of two or
    more."""

    def __init__(self, model: C2CModel) -> None:
        super().__init__(model, "mismatched")

    def running(self) -> contextlib.AbstractContextManager:
        return self.model.mismatched_sharers()


class TranslatedMismatched(Answerer):
    """Mode translated where each question gets the translated brief of the next question of its batch whose
    brief is another (several questions about one report must not pass each other the same report): what a
    translator gives whatever the sharer read (a format or topic prior). Needs two different briefs a batch."""

    def __init__(self, model: C2CModel) -> None:
        super().__init__(model, "translated_mismatched")

    def prepare(self, questions: list[Question]) -> tuple[list[Prompt], list[str | None], Timings]:
        if len(questions) < 2:
            raise C2CError("the translated_mismatched control needs at least two questions in a batch")
        briefs = [(q.prompt.brief, q.prompt.parts) if isinstance(q.prompt, Briefed) else ("", ())
                  for q in questions]  # fmt: skip
        n = len(briefs)
        other = [next((briefs[(i + k) % n] for k in range(1, n) if briefs[(i + k) % n] != briefs[i]), None)
                 for i in range(n)]  # fmt: skip
        if None in other:
            raise C2CError("the translated_mismatched control needs two different briefs in every batch (this one "
                           "asks about one brief only): use a larger --batch-size")  # fmt: skip
        prompts = [Briefed(q.prompt.prompt if isinstance(q.prompt, Briefed) else q.prompt, *other[i])
                   for i, q in enumerate(questions)]  # fmt: skip
        return prompts, [None] * len(questions), Timings()


NEUTRAL_BRIEF = ("This is a short passage of ordinary text. It is here so that something is written in this place, "
                 "and it says nothing in particular about any subject. The sentences are plain and complete, and "
                 "they are followed by a question.")


class Neutral(Answerer):
    """Mode translated where every question's brief is the same neutral passage, well formed and about nothing in
    particular (placed where the brief would be): what any translated cache gives, whatever it says."""

    def __init__(self, model: C2CModel) -> None:
        super().__init__(model, "neutral")

    def prepare(self, questions: list[Question]) -> tuple[list[Prompt], list[str | None], Timings]:
        return [self.final_prompt(q, None) for q in questions], [None] * len(questions), Timings()

    def final_prompt(self, question: Question, notes: str | None) -> Prompt:
        briefed = _briefed(question)
        return Briefed(briefed.prompt, NEUTRAL_BRIEF) if briefed else question.prompt


class ReceiverBrief(Answerer):
    """The receiver reads the brief itself, placed exactly where the translated cache of it would be."""

    def __init__(self, model: C2CModel) -> None:
        super().__init__(model, "receiver_brief")

    def prepare(self, questions: list[Question]) -> tuple[list[Prompt], list[str | None], Timings]:
        return [sharer_messages(q.prompt) for q in questions], [None] * len(questions), Timings()


ANSWERERS: dict[str, Callable[..., Answerer]] = {
    "t2t": TextToText, "t2t_blind": BlindNotes, "mismatched": Mismatched,
    "translated_mismatched": TranslatedMismatched, "neutral": Neutral, "receiver_brief": ReceiverBrief,
}  # every other mode: the pipeline mode of that name over the prompts as given


def answerer(model: C2CModel, mode: str, note_tokens: int = 64, exact_notes: bool = False) -> Answerer:
    """The answerer for `mode` (any mode of modes.py) over `model`."""
    spec = get_mode(mode)
    if spec.sharer and not model.sharers:
        raise C2CError(f"mode {mode!r} needs a sharer")
    if spec.maps == "translators" and not model.translators:
        raise C2CError(f"mode {mode!r} needs a translator (--translator; fit one with `c2c fit`)")
    if mode in ("t2t", "t2t_blind"):
        return ANSWERERS[mode](model, note_tokens, exact_notes)
    return ANSWERERS[mode](model) if mode in ANSWERERS else Answerer(model, mode)
