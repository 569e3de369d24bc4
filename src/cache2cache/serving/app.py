"""`c2c serve`: an OpenAI-compatible HTTP server for a receiver, its sharers and their fusers.

Routes: POST /v1/chat/completions and /v1/completions (streaming as server-sent events, or not), GET /v1/models,
/health, /metrics (Prometheus), and the playground page at /. Served model ids (GET /v1/models lists them):

    <receiver name>, "receiver"          the receiver alone
    <sharer name>                        that sharer alone
    "c2c", "c2c/<sharer>"                the receiver reading every sharer's cache (or one) through the fusers
    "t2t", "t2t/<sharer>"                text-to-text, for comparison: the sharer writes notes, the receiver reads

A c2c request may name its sharers in an extra body field, `"sharers": [...]`. Every request goes through one
`Engine` (engine.py), which batches concurrent requests; one prefix store serves all of them, so a follow-up
turn does not re-prefill the conversation so far.

Safety: bad input is a 4xx with an OpenAI-style error body, never a 500; optional bearer API key; limits on
request size, prompt length (the models' contexts) and max_tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..caches.signing import CacheKeys, ScaleProfile
from ..caches.store import PrefixStore
from ..errors import C2CError
from ..inference.answerers import Answerer, answerer
from ..inference.batching import Briefed, GenerateOptions
from ..inference.pipeline import C2CModel
from .engine import Engine, Finished, Job
from .schemas import ApiError, ChatRequest, CompletionRequest, Usage, completion_body, error_body, new_id, now
from .transfer import add_cache_routes, fetch_remote_caches, fetch_remote_translated

PLAYGROUND = Path(__file__).with_name("playground.html")


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


def create_app(model: C2CModel, config: ServeConfig | None = None) -> FastAPI:
    server = Server(model, config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.engine.close()

    app = FastAPI(title="cache2cache", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.server = server
    metrics = server.metrics

    def fail(status: int, message: str, **kw) -> JSONResponse:
        metrics.errors.labels(str(status)).inc()
        return JSONResponse(error_body(message, **kw), status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return fail(e.status, e.message, kind=e.kind, param=e.param, code=e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return fail(400, f"{where + ': ' if where else ''}{first.get('msg', 'invalid request')}", param=where)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return fail(e.status_code, str(e.detail), kind="not_found" if e.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        return fail(500, f"internal error: {type(e).__name__}: {e}", kind="server_error")

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if request.url.path.startswith("/v1/") and server.config.api_key:
            if request.headers.get("authorization") != f"Bearer {server.config.api_key}":
                return fail(401, "missing or wrong API key (Authorization: Bearer ...)", kind="authentication_error",
                            code="invalid_api_key")  # fmt: skip
        limit = server.config.max_cache_bytes if request.url.path == "/v1/caches/import" else \
            server.config.max_request_bytes  # fmt: skip
        size = request.headers.get("content-length")
        if request.method == "POST" and size is None:
            return fail(411, "send a Content-Length header")
        if size is not None and (not size.isdigit() or int(size) > limit):
            return fail(413, f"request body over {limit} bytes")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "queue_depth": server.engine.depth, "models": server.model_ids()}

    @app.get("/metrics")
    async def prometheus():
        stats = server.store.stats
        metrics.queue.set(server.engine.depth)
        metrics.store_hits.set(stats.hits)
        metrics.store_misses.set(stats.misses)
        metrics.store_bytes.set(stats.bytes)
        metrics.reused.set(stats.reused_tokens)
        metrics.batches.set(server.engine.batches)
        metrics.batched_rows.set(server.engine.batched_rows)
        metrics.cancelled.set(server.engine.cancelled_rows)
        return Response(generate_latest(metrics.registry), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "cache2cache"}
                                           for m in server.model_ids()]}  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(PLAYGROUND.read_text())

    async def run(request: Request, req, prompt, kind: str):
        ans = server.route(req.model, req.sharers)
        options = server.options(req)
        await asyncio.to_thread(server.check_length, ans, prompt, options)
        if server.config.sharer_url and ans.mode == "c2c":
            await fetch_remote_caches(server, ans.model, prompt)
        elif server.config.sharer_url and ans.mode == "translated" and isinstance(prompt, Briefed):
            await fetch_remote_translated(server, ans.model, prompt)
        job = Job(ans, prompt, options, req.stops, asyncio.get_running_loop())
        server.engine.submit(job)
        metrics.queue.set(server.engine.depth)
        ident, created = new_id("chatcmpl" if kind == "chat" else "cmpl"), now()
        if req.stream:
            return StreamingResponse(_stream(request, job, ident, created, req.model, kind),
                                     media_type="text/event-stream")  # fmt: skip
        done = await _wait(request, job)
        if done is None:  # the client went away
            return Response(status_code=499)
        metrics.requests.labels(kind, "200").inc()
        return completion_body(kind, ident, created, req.model, done.text, done.finish_reason, _usage(done))

    def _record(done: Finished) -> None:
        metrics.tokens.inc(done.completion_tokens)
        if done.ttft_s is not None:
            metrics.ttft.observe(done.ttft_s)
        if done.seconds > 0:
            metrics.tps.set(done.completion_tokens / done.seconds)

    async def _wait(request: Request, job: Job) -> Finished | None:
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return None
                continue
            if kind == "error":
                raise _as_api_error(value)
            if kind == "done":
                _record(value)
                return value

    async def _stream(request: Request, job: Job, ident: str, created: int, model: str, kind: str
                      ) -> AsyncIterator[str]:  # fmt: skip
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(delta: str | None, finish: str | None, usage: Usage | None = None) -> str:
            if kind == "chat":
                body = {"index": 0, "delta": ({"role": "assistant", "content": delta} if delta is not None else {}),
                        "finish_reason": finish}  # fmt: skip
            else:
                body = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            data = {"id": ident, "object": obj, "created": created, "model": model, "choices": [body]}
            if usage is not None:
                data["usage"] = usage.model_dump()
            return f"data: {json.dumps(data)}\n\n"

        try:
            while True:
                kind_, value = await job.events.get()
                if kind_ == "delta":
                    yield chunk(value, None)
                elif kind_ == "error":
                    e = _as_api_error(value)
                    metrics.errors.labels(str(e.status)).inc()
                    yield f"data: {json.dumps(error_body(e.message, e.kind))}\n\n"
                    break
                else:
                    _record(value)
                    metrics.requests.labels(kind, "200").inc()
                    yield chunk(None, value.finish_reason, _usage(value))
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # a client that disconnects mid-stream lands here: its row stops at the next token

    add_cache_routes(app, server)

    def briefed(req, prompt):
        """With a `brief`, the sharers (and a translator) read it before the last user message; the receiver never
        does. Mode translated needs one."""
        if req.model.partition("/")[0] == "translated" and not (req.brief or "").strip():
            raise ApiError(400, "model 'translated' answers from a translated brief: send a non-empty \"brief\"",
                           param="brief")  # fmt: skip
        return Briefed(prompt, req.brief) if (req.brief or "").strip() else prompt

    @app.post("/v1/chat/completions")
    async def chat(request: Request, req: ChatRequest):
        return await run(request, req, briefed(req, [m.model_dump() for m in req.messages]), "chat")

    @app.post("/v1/completions")
    async def completions(request: Request, req: CompletionRequest):
        return await run(request, req, briefed(req, req.prompt), "completion")

    return app


@dataclass
class Running:
    """A server started by `start_in_thread`: its base URL, and `stop()`."""

    server: object
    thread: threading.Thread
    url: str

    def stop(self, timeout: float = 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout)


def start_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Running:
    """Run `app` on uvicorn in a daemon thread (port 0: a free one). For tests, benchmarks and the screenshot
    tool; `c2c serve` runs uvicorn itself."""
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("the server did not start within 30 s")
    return Running(server, thread, f"http://{host}:{server.servers[0].sockets[0].getsockname()[1]}")


def _usage(done: Finished) -> Usage:
    return Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                 total_tokens=done.prompt_tokens + done.completion_tokens)  # fmt: skip


def _as_api_error(e: Exception) -> ApiError:
    if isinstance(e, ApiError):
        return e
    if isinstance(e, C2CError):
        return ApiError(400, str(e))
    return ApiError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error")
