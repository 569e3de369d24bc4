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
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import C2CError
from ..inference.batching import Briefed
from ..inference.modes import MODES
from ..inference.pipeline import C2CModel
from .engine import Finished, Job
from .schemas import ApiError, ChatRequest, CompletionRequest, Usage, completion_body, error_body, new_id, now
from .server import ServeConfig, Server
from .transfer import add_cache_routes, fetch_remote_caches, fetch_remote_translated

PLAYGROUND = Path(__file__).with_name("playground.html")


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
        carried_by = MODES[ans.mode].maps  # what a receiver-only host fetches from the sharers' host first
        if server.config.sharer_url and carried_by == "fusers":
            await fetch_remote_caches(server, ans.model, prompt)
        elif server.config.sharer_url and carried_by == "translators" and isinstance(prompt, Briefed):
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
        mode = req.model.partition("/")[0]
        if mode in MODES and MODES[mode].brief and not (req.brief or "").strip():
            raise ApiError(400, f"model {mode!r} answers from a translated brief: send a non-empty \"brief\"",
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
