"""Exchanges: distillation text shaped like a message's use, from the trainable four fifths of the question sets.

A translator distilled on plain passages learns to continue a passage as its teacher does; a message is used
differently: the sender reads a brief, the receiver reads a question after it and answers. An exchange is that
shape (translation/distill.py scores only the answer), so a sharer teacher's answer, what it knows about the
brief, is the whole target. Shapes (`c2c fit --distill-on note:sciq:400,brief:sciq_brief:200`):

    note    the record's question is the brief ("Question: ..."); the receiver is asked NOTE_QUESTION, as the
            knowledge probes ask it (sciq_note, commonsense_qa_note), and answers with the gold answer
    cued    a note followed by NOTE_CUE ("Answer:"), as the cued knowledge probes (sciq_note_cued) end it
    brief   the record's own brief (a probe source with evidence, e.g. sciq_brief: the support paragraph) is the
            brief; the receiver is asked the record's question and answers with the gold answer

The prompt is the evaluation's own (`prompt_for`, method cloze: the answer is an option's text after "Answer:").
Only records outside the held-out fifth are read (mixture.SOURCES); ARC, OpenBookQA, MMLU and GSM8K are not
sources at all.
"""

from __future__ import annotations

from ..errors import C2CError
from ..evaluation.question_sets import MALFORMED, as_note
from ..evaluation.scoring import prompt_for
from ..evaluation.tasks import Item
from ..translation.distill import Exchange
from ..translation.text import parse_count
from .mixture import SOURCES

SHAPES = ("note", "cued", "brief")


def parse_exchanges(spec: str) -> list[tuple[str, str, int | None]]:
    """'note:sciq:400,brief:sciq_brief' -> [(shape, source, limit or None)]; checked before any model loads."""
    out = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        shape, _, rest = entry.partition(":")
        source, _, limit = rest.partition(":")
        if shape not in SHAPES or not source:
            raise C2CError(f"bad exchange entry {entry!r}: expected SHAPE:SOURCE[:N] with SHAPE one of "
                           f"{', '.join(SHAPES)}")  # fmt: skip
        if source not in SOURCES:
            raise C2CError(f"unknown exchange source {source!r}: use one of {', '.join(sorted(SOURCES))}")
        out.append((shape, source, parse_count(limit, entry, "exchange", "SHAPE:SOURCE:N")))
    if not out:
        raise C2CError("no exchanges given")
    return out


def exchange_of(item: Item, shape: str, source: str) -> Exchange:
    """One question as an exchange of `shape`; ValueError where the record cannot make one."""
    if item.choices and not 0 <= int(item.answer) < len(item.choices):
        raise ValueError("answer is not one of the options")
    gold = str(item.choices[int(item.answer)] if item.choices else item.answer).strip()
    if shape in ("note", "cued"):
        item = as_note(item, source, cued=shape == "cued")
    if not item.brief.strip() or not gold:
        raise ValueError("no brief or no answer")
    return Exchange(item.brief, prompt_for(item, "cloze"), f" {gold}")


def exchanges(spec: str) -> list[Exchange]:
    """Every exchange `spec` names, sources interleaved (as fitting passages are) so that any prefix mixes them."""
    lists = []
    for shape, source, limit in parse_exchanges(spec):
        got: list[Exchange] = []
        for i, row in SOURCES[source].rows():
            try:
                got.append(exchange_of(SOURCES[source].to_item(row, i), shape, source))
            except MALFORMED:
                continue
            if limit is not None and len(got) >= limit:
                break
        if not got:
            raise C2CError(f"{shape}:{source} gives no exchanges (its records have no {shape})")
        lists.append(got)
    return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]
