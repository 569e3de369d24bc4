"""Training conversations from ShareGPT (bundled), JSONL files or `datasets` folders.

A JSONL record is a chat ({"messages": [...]} or ShareGPT's {"conversations": [...]}), a prompt/response pair,
or a multiple-choice question in `c2c eval`'s task format ({"question", "choices", "answer"}).

Every record becomes a `Conversation`: the messages the sharer and the receiver both read (the prompt), and
the response the receiver is trained to produce. The split is explicit: the prompt is every message before the
first assistant turn, the response is that assistant turn. Records that cannot be used are counted by reason
in a `DataReport`, never dropped silently and never fatal.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..data.sharegpt import json_array_records, sharegpt_path
from ..errors import C2CError
from ..evaluation.scoring import prompt_for
from ..evaluation.tasks import Item

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
          "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}  # fmt: skip


@dataclass
class Conversation:
    prompt: list[dict[str, str]]  # chat messages read by sharer and receiver
    response: str  # the assistant turn the receiver is trained on
    options: list[str] = field(default_factory=list)  # multiple choice: every option (response is one of them)
    answer: int = -1  # index of the gold option in `options`
    brief: str = ""  # read by the sharer only, before the prompt's last user message (evaluation/probes.py)


@dataclass
class DataReport:
    """What happened to every record of a source."""

    source: str
    records: int = 0
    used: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    not_needed: int = 0  # usable records left unread because the run needs fewer examples
    short: int = 0  # examples a data mix wanted from this source beyond what it has

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common()) or "none"
        rest = f", {self.not_needed} not needed by this run" if self.not_needed else ""
        rest += f", {self.short} short of its share in the mix" if self.short else ""
        return f"{self.source}: {self.records} records, {self.used} used, skipped: {skipped}{rest}"

    def to_dict(self) -> dict:
        return {"source": self.source, "records": self.records, "used": self.used, "skipped": dict(self.skipped),
                "not_needed": self.not_needed, "short": self.short}


def item_conversation(item: Item) -> Conversation:
    """A question as training data: the cloze prompt the receiver is evaluated with, the gold answer as the
    response, and for multiple choice every option (for the option-ranking loss)."""
    if item.choices:
        return Conversation(prompt_for(item, "cloze"), item.choices[item.answer], list(item.choices), item.answer,
                            item.brief)  # fmt: skip
    return Conversation(prompt_for(item, "cloze"), str(item.answer), brief=item.brief)


def _mc_conversation(record: dict) -> Conversation | str:
    """A {"question", "choices", "answer": index or letter} record (the `c2c eval` task format)."""
    question, choices, answer = record.get("question"), record.get("choices"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        return "malformed question"
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        return "malformed choices"
    if isinstance(answer, str) and len(answer) == 1 and answer.isalpha():
        answer = ord(answer.upper()) - ord("A")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        return "answer not a choice"
    brief = record.get("brief", "")
    if not isinstance(brief, str):
        return "malformed brief"
    return item_conversation(Item(str(record.get("id", "")), question, choices, answer, brief=brief))


def _to_conversation(record) -> Conversation | str:
    """A Conversation, or the reason (a short string) why this record cannot be one."""
    if not isinstance(record, dict):
        return "not an object"
    if "choices" in record:
        return _mc_conversation(record)
    if "prompt" in record or "response" in record:
        prompt, response = record.get("prompt"), record.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            return "prompt/response not strings"
        messages = [{"role": "user", "content": prompt}]
    else:
        raw = record.get("messages", record.get("conversations"))
        if not isinstance(raw, list):
            return "no messages"
        messages = []
        for m in raw:
            if not isinstance(m, dict):
                return "malformed message"
            role = _ROLES.get(str(m.get("role", m.get("from", ""))).lower())
            content = m.get("content", m.get("value"))
            if role is None or not isinstance(content, str):
                return "malformed message"
            messages.append({"role": role, "content": content})
        first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
        if first is None:
            return "no assistant turn"
        if first == 0:
            return "starts with an assistant turn"
        messages, response = messages[:first], messages[first]["content"]
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        return "empty prompt"
    if not response.strip():
        return "empty response"
    return Conversation(messages, response)


def _jsonl_records(path: Path, report: DataReport) -> Iterator[object]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                report.records += 1
                report.skipped["invalid JSON line"] += 1


def load_conversations(source: str, limit: int | None = None, cache_dir: Path | None = None
                       ) -> tuple[list[Conversation], DataReport]:  # fmt: skip
    """Read `source`: "sharegpt", a .jsonl/.json file, or a `datasets.save_to_disk` folder."""
    if source == "sharegpt":
        path = sharegpt_path(cache_dir)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise C2CError(f"data source not found: {source} (use 'sharegpt', a .jsonl file or a datasets folder)")
    report = DataReport(source=source)
    if path.is_dir():
        records: Iterator[object] = _datasets_records(path)
    elif path.suffix == ".jsonl":
        records = _jsonl_records(path, report)
    elif path.suffix == ".json":
        records = json_array_records(path)
    else:
        raise C2CError(f"unsupported data file {path.name}: use .jsonl (one record per line) or .json (an array)")
    out: list[Conversation] = []
    for record in records:
        report.records += 1
        conv = _to_conversation(record)
        if isinstance(conv, str):
            report.skipped[conv] += 1
            continue
        out.append(conv)
        if limit is not None and len(out) >= limit:
            break
    report.used = len(out)
    if not out:
        raise C2CError(f"no usable conversations in {source} ({report.summary()})")
    return out, report


def _datasets_records(path: Path) -> Iterator[object]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise C2CError("reading a datasets folder needs the `datasets` package: pip install 'cache2cache[datasets]'"
                       ) from None  # fmt: skip
    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise C2CError(f"not a datasets folder: {path} ({e})") from None
    if hasattr(ds, "keys"):  # a DatasetDict: use its train split, else the first one
        ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
    yield from ds
