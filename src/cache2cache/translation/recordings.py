"""Recordings: what both models read for a fit's refinements and distillation (passages, exchanges, a teacher's top-k
on them), kept in one safetensors file (`c2c fit --recordings FILE`), so that the next fit on the same text (another
learning rate, another layer through the knob) reads none of it again: recording is most of a distillation's time
(500 note exchanges and the 1.5B's top-k on them: about 40 minutes at one thread).

A file names what it records (its identity: the pair, the template, the sharer layers whose states it keeps, the
teacher and k, a digest of every text); a fit whose reading differs is refused with the difference named, never
given another fit's recordings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import C2CError
from .distill import Exchange
from .fit import PassagePair
from .refine import load_pairs, pairs_identity, save_pairs


@dataclass(frozen=True)
class Reading:
    """What a recordings file is a recording of."""

    receiver: str
    sharer: str
    chat: bool
    states_of: list[int] | None  # sharer layers whose entering states are kept (an entry map's distillation)
    teacher: str  # whose top-k is recorded ("" when none is)
    top_k: int
    passages: int  # how many of the recorded pairs are passages; the rest are exchanges
    digest: str  # of the passages' and exchanges' texts, in order

    @classmethod
    def of(cls, receiver: str, sharer: str, chat: bool, states_of: list[int] | None, teacher: str, top_k: int,
           passages: list[str], exchanges: list[Exchange]) -> "Reading":  # fmt: skip
        texts = json.dumps([passages, [[e.brief, e.messages, e.answer] for e in exchanges]], sort_keys=True)
        return cls(receiver, sharer, chat, states_of, teacher if top_k else "", top_k, len(passages),
                   hashlib.sha256(texts.encode()).hexdigest()[:16])  # fmt: skip


def recorded(path: Path | None, reading: Reading, record: Callable[[], tuple[list[PassagePair], list[PassagePair]]]
             ) -> tuple[list[PassagePair], list[PassagePair]]:  # fmt: skip
    """(passages, exchanges) as `record` reads them, or from `path` where it holds this `reading`; a new recording
    is written to `path` (atomically) before it is used."""
    if path is not None and path.is_file():
        found = pairs_identity(path)
        want = asdict(reading)
        if found != want:
            differ = sorted(k for k in want if (found or {}).get(k) != want[k])
            raise C2CError(f"--recordings {path} records another reading (differs in: {', '.join(differ)}); "
                           "name another file or delete it")  # fmt: skip
        pairs = load_pairs(path)
        return pairs[:reading.passages], pairs[reading.passages:]
    passages, exchanges = record()
    if path is not None:
        save_pairs(passages + exchanges, path, asdict(reading))
    return passages, exchanges
