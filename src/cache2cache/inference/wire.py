"""What crosses the wire for one answer, in bytes: beside accuracy and time, the measure that tells a cache message
from a text one. Each mode says what it sends (modes.py `wire`):

    text            the notes a sender wrote (t2t, t2t_blind), or the brief itself (receiver_brief), as UTF-8
    receiver_cache  the receiver's cache of the brief, written by the translators: keys and values of every layer
                    for each of the brief's receiver tokens, at the cache's dtype
    sharer_cache    the sharers' caches of the prompt they read (c2c): keys and values of every sharer layer

Counted from the tokens of what is sent (the brief alone, tokenised by the model that caches it), so a template
token or two at a boundary may differ from the pipeline's exact span; headers and signatures are not counted.
"""

from __future__ import annotations

from ..alignment.tokens import encode, render
from ..kv import ModelGeometry
from ..models.loading import LoadedModel
from .batching import Briefed, Prompt, sharer_messages
from .modes import get_mode
from .pipeline import C2CModel


def kv_bytes_per_token(model: LoadedModel) -> int:
    """Bytes of one token's keys and values over every layer, at the model's dtype."""
    geo = ModelGeometry.from_config(model.model.config)
    return sum(2 * g.kv_dim for g in geo.layers) * model.model.dtype.itemsize


def wire_bytes(model: C2CModel, mode: str, question: Prompt, final: Prompt, notes: str | None) -> int:
    """Bytes sent to answer `question` in `mode`, whose answering model read `final` with `notes` (if any)."""
    kind = get_mode(mode).wire
    if kind == "text":
        if notes is not None:
            return len(notes.encode())
        return len(question.brief.encode()) if isinstance(question, Briefed) else 0
    if kind == "receiver_cache":
        if not isinstance(final, Briefed) or not final.brief.strip():
            return 0  # a row without a brief gets no message
        tokens = len(encode(model.receiver.tokenizer, final.brief.strip())[0])
        return tokens * kv_bytes_per_token(model.receiver)
    if kind == "sharer_cache":
        messages = sharer_messages(final)
        return sum(len(encode(s.tokenizer, render(s.tokenizer, messages, model.chat))[0]) * kv_bytes_per_token(s)
                   for s in model.sharers)  # fmt: skip
    return 0


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1000, as network sizes are given)."""
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
