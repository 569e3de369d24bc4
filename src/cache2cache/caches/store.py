"""A bounded in-memory store of prompt caches: repeated prefixes (a document, a conversation so far, a system
prompt) are prefilled once.

Entries are keyed by model fingerprint + a hash of their token ids and evicted least-recently-used when their
bytes exceed the budget. A lookup returns the entry sharing the longest token prefix with the new prompt, cut to
that prefix: a cache covers every position, so a stored "document + question 1" also serves "document +
question 2" up to where they differ. Thread-safe: a server shares one store across requests.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..alignment.tokens import Messages
from ..models.loading import LoadedModel
from .identity import identity_of
from .prompt_cache import PromptCache


def token_hash(ids: list[int]) -> str:
    return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:16]


@dataclass
class StoreStats:
    hits: int = 0  # lookups that reused at least `min_prefix` tokens
    misses: int = 0
    reused_tokens: int = 0  # tokens not recomputed thanks to hits
    computed_tokens: int = 0  # tokens the model had to run over
    evictions: int = 0
    bytes: int = 0
    entries: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class PrefixStore:
    def __init__(self, max_bytes: int = 1 << 30, min_prefix: int = 16) -> None:
        self.max_bytes, self.min_prefix = max_bytes, min_prefix
        self._entries: OrderedDict[tuple[str, str], PromptCache] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = StoreStats()

    def put(self, cache: PromptCache, space: str = "") -> None:
        """Keep `cache` (replacing an identical one); evict the least recently used entries beyond the budget. A
        cache larger than the whole budget is not kept. `space` keeps caches that are not the model's own
        reading of their tokens (a translated brief) apart from those that are."""
        if cache.nbytes > self.max_bytes:
            return
        key = (cache.identity.fingerprint + space, token_hash(cache.token_ids))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.stats.bytes -= old.nbytes
            self._entries[key] = cache
            self.stats.bytes += cache.nbytes
            while self.stats.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.stats.bytes -= evicted.nbytes
                self.stats.evictions += 1
            self.stats.entries = len(self._entries)

    def longest_prefix(self, fingerprint: str, ids: list[int], space: str = "") -> PromptCache | None:
        """The stored cache of this model (in `space`) sharing the most leading tokens with `ids`, cut to the
        shared part (None below `min_prefix` tokens). Marks the entry as recently used."""
        best, best_n, best_key = None, 0, None
        with self._lock:
            for key, c in self._entries.items():
                if key[0] != fingerprint + space:
                    continue
                n = common_prefix(c.token_ids, ids)
                if n > best_n:
                    best, best_n, best_key = c, n, key
            if best_key is not None and best_n >= self.min_prefix:
                self._entries.move_to_end(best_key)
        if best is None or best_n < self.min_prefix:
            return None
        return best.truncate(best_n)

    def get(self, fingerprint: str, ids: list[int], space: str = "") -> PromptCache | None:
        """The stored cache of exactly `ids` (in `space`), counted as a hit or a miss."""
        with self._lock:
            cache = self._entries.get((fingerprint + space, token_hash(ids)))
            if cache is not None and cache.token_ids == ids:
                self._entries.move_to_end((fingerprint + space, token_hash(ids)))
                self.stats.hits += 1
                self.stats.reused_tokens += len(ids)
                return cache
            self.stats.misses += 1
            return None

    def prefill(self, model: LoadedModel, ids: list[int], messages: Messages | None = None, chat: bool = True,
                hidden: bool = False) -> PromptCache:  # fmt: skip
        """The cache of `ids` for `model`: the longest stored prefix extended by the rest, then stored."""
        ident = identity_of(model)
        start = self.longest_prefix(ident.fingerprint, ids)
        if start is not None and hidden and start.hidden is None:
            start = None  # the stored one has no E-cache to extend
        with self._lock:
            if start is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1
                self.stats.reused_tokens += len(start)
            self.stats.computed_tokens += len(ids) - (len(start) if start is not None else 0)
        base = start if start is not None else PromptCache.empty(model, hidden=hidden)
        base.chat = chat
        cache = base.extend(model, ids[len(base):], messages)
        cache.chat = chat
        self.put(cache)
        return cache

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.stats.bytes = self.stats.entries = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two id lists share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
