"""What a `c2c serve` process serves: its settings, metrics, and the models with the answerer each model id names
(the routes themselves are in app.py)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..caches.signing import CacheKeys, ScaleProfile
from ..caches.store import PrefixStore
from ..errors import C2CError
from ..inference.answerers import Answerer, answerer
from ..inference.batching import GenerateOptions
from ..inference.pipeline import C2CModel
from .engine import Engine
from .schemas import ApiError


@dataclass
class ServeConfig:
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_tokens: int = 512  # the most new tokens one request may ask for
    default_max_tokens: int = 128
    max_request_bytes: int = 1 << 20
    max_cache_bytes: int = 512 << 20  # an imported cache file (POST /v1/caches/import)
    api_key: str | None = None
    store_bytes: int = 2 << 30
    note_tokens: int = 64  # text-to-text's note budget
    sharer_url: str | None = None  # sharers run in another `c2c serve` (their caches are fetched from it per request)
    cache_keys: CacheKeys | None = None  # sign exported caches, verify imported and fetched ones (caches/signing.py)
    allow_unsigned_caches: bool = False  # without keys: accept imports and remote caches anyway (trusted network)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("c2c_requests", "Requests by route and status", ["route", "status"], registry=r)
        self.errors = Counter("c2c_errors", "Requests answered with an error", ["status"], registry=r)
        self.queue = Gauge("c2c_queue_depth", "Requests waiting for the engine", registry=r)
        self.ttft = Histogram("c2c_time_to_first_token_seconds", "Time to first token", registry=r,
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))  # fmt: skip
        self.tokens = Counter("c2c_generated_tokens", "Completion tokens generated", registry=r)
        self.tps = Gauge("c2c_tokens_per_second", "Completion tokens/s of the last finished request", registry=r)
        self.store_hits = Gauge("c2c_prefix_store_hits", "Prefix-store lookups that reused a prefix", registry=r)
        self.store_misses = Gauge("c2c_prefix_store_misses", "Prefix-store lookups that reused nothing", registry=r)
        self.store_bytes = Gauge("c2c_prefix_store_bytes", "Bytes held by the prefix store", registry=r)
        self.reused = Gauge("c2c_prefix_store_reused_tokens", "Tokens not recomputed thanks to the store", registry=r)
        self.batches = Gauge("c2c_batches", "generate() calls run by the engine", registry=r)
        self.batched_rows = Gauge("c2c_batched_requests", "Requests those calls served", registry=r)
        self.cancelled = Gauge("c2c_cancelled_requests", "Requests stopped because the client left", registry=r)


@dataclass
class Server:
    """The served models: one receiver, its sharers, one C2CModel per sharer set (built on first use)."""

    base: C2CModel  # the receiver with every sharer and fuser
    config: ServeConfig = field(default_factory=ServeConfig)

    def __post_init__(self) -> None:
        self.store = PrefixStore(self.config.store_bytes)
        self.base.store = self.store
        self.models: dict[tuple[str, ...], C2CModel] = {tuple(s.name for s in self.base.sharers): self.base}
        self.answerers: dict[tuple, Answerer] = {}
        self.model_lock = threading.Lock()  # one forward at a time: the engine's batches and cache exports
        self.engine = Engine(self.config.max_batch, self.config.max_wait_ms / 1000, self.model_lock)
        self.metrics = _Metrics()
        self.scales: dict[str, ScaleProfile | None] = {}  # per served model: what an imported cache may hold

    def model_ids(self) -> list[str]:
        """Served ids. With remote sharers (skeletons here) only the receiver and C2C: the rest needs weights."""
        if self.config.sharer_url:
            names = [self.base.receiver.name, "receiver"]
            if self.base.fusers:
                names += ["c2c"] + [f"c2c/{s.name}" for s in self.base.sharers]
        else:
            names = [self.base.receiver.name, "receiver"] + [s.name for s in self.base.sharers]
            if self.base.sharers:
                names += ["c2c", "t2t"] + [f"{m}/{s.name}" for m in ("c2c", "t2t") for s in self.base.sharers]
        if self.base.translators:
            names += ["translated"] + [f"translated/{s.name}" for s in self.base.sharers[:len(self.base.translators)]]
        return names

    def _pair(self, sharers: tuple[str, ...]) -> C2CModel:
        if sharers not in self.models:
            by_name = {s.name: (s, f) for s, f in zip(self.base.sharers, self.base.fusers)}
            unknown = [s for s in sharers if s not in by_name]
            if unknown or not sharers or len(set(sharers)) != len(sharers):
                raise ApiError(400, f"unknown or repeated sharer(s) {unknown or list(sharers)}; served sharers: "
                               f"{', '.join(by_name) or 'none'}", param="sharers")  # fmt: skip
            translators = dict(zip((s.name for s in self.base.sharers), self.base.translators))
            chosen = []  # each chosen sharer's translator, in order, as far as they have one
            for name in sharers:
                if name not in translators:
                    break
                chosen.append(translators[name])
            self.models[sharers] = C2CModel(self.base.receiver, [by_name[s][0] for s in sharers],
                                            [by_name[s][1] for s in sharers], self.base.chat, self.store,
                                            translators=chosen)  # fmt: skip
        return self.models[sharers]

    def route(self, model: str, sharers: list[str] | None) -> Answerer:
        """The answerer a model id (and optional `sharers`) names; 404 for an unknown model."""
        all_sharers = tuple(s.name for s in self.base.sharers)
        mode, _, one = model.partition("/")
        if self.config.sharer_url and model not in self.model_ids():
            raise ApiError(404, f"model {model!r} is not served here: the sharers run at {self.config.sharer_url}",
                           param="model", code="model_not_found")  # fmt: skip
        if model in (self.base.receiver.name, "receiver"):
            key = ("receiver", all_sharers)
        elif model in all_sharers:
            key = ("sharer", (model,))
        elif mode in ("c2c", "t2t") and all_sharers and (not one or one in all_sharers):
            chosen = tuple(sharers) if sharers else ((one,) if one else all_sharers)
            key = (mode, chosen[:1] if mode == "t2t" else chosen)
        elif mode == "translated" and model in self.model_ids():
            key = (mode, (one or all_sharers[0],))
        else:
            raise ApiError(404, f"model {model!r} is not served here; GET /v1/models lists the served models",
                           param="model", code="model_not_found")  # fmt: skip
        if key not in self.answerers:
            self.answerers[key] = answerer(self._pair(key[1]), key[0], self.config.note_tokens)
        return self.answerers[key]

    def options(self, req) -> GenerateOptions:
        n = req.new_tokens or min(self.config.default_max_tokens, self.config.max_tokens)
        if n > self.config.max_tokens:
            raise ApiError(400, f"max_tokens {n} exceeds this server's limit of {self.config.max_tokens}",
                           param="max_tokens")  # fmt: skip
        sample = req.temperature > 0
        return GenerateOptions(max_new_tokens=n, do_sample=sample, temperature=req.temperature if sample else 1.0,
                               top_p=req.top_p, seed=req.seed)  # fmt: skip

    def check_length(self, ans: Answerer, prompt, options: GenerateOptions) -> None:
        """400 now for a prompt that does not fit, rather than an error for a whole batch later."""
        try:
            ans.model.encode([prompt], ans.answer_mode, options.max_new_tokens)
        except C2CError as e:
            raise ApiError(400, str(e), param="messages") from None
