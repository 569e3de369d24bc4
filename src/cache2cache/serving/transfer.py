"""KV transfer between processes and hosts: caches as HTTP messages.

    POST /v1/caches          {"model": <a served model>, "messages": [...], "dtype": "bfloat16" | null}
                             -> the model's PromptCache of the conversation, as a cache file
                                (application/octet-stream; X-C2C-Tokens, X-C2C-Bytes-Per-Token headers)
    POST /v1/caches/import   a cache file as the body -> kept in this server's prefix store
                             -> {"model", "tokens", "bytes"}

So a sharer service prefills a conversation and returns its cache; a receiver service imports it, and its next
c2c request over that conversation reads the sharer's keys and values from the store instead of running the
sharer (tokens the cache does not cover are still computed here). The imported cache must come from a model this
server serves (same fingerprint): anything else is refused. A 16-bit wire format halves a float32 cache.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import torch

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ..alignment.tokens import encode, render
from ..caches.identity import identity_of
from ..caches.prompt_cache import PromptCache
from ..errors import C2CError
from .schemas import ChatMessage

class CacheRequest(BaseModel):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    dtype: Literal["bfloat16", "float16"] | None = None


def add_cache_routes(app: FastAPI, server, api_error) -> None:
    """Register the two routes on `app` (see the module docstring); `api_error(status, message, **kw)` makes
    the app's error responses."""

    def served_models() -> dict[str, object]:
        base = server.base
        return {m.name: m for m in [base.receiver, *base.sharers]}

    @app.post("/v1/caches")
    async def export_cache(req: CacheRequest):
        model = served_models().get(req.model)
        if model is None:
            raise api_error(404, f"model {req.model!r} is not served here (caches come from: "
                            f"{', '.join(served_models())})", param="model", code="model_not_found")  # fmt: skip
        messages = [m.model_dump() for m in req.messages]

        def prefill() -> PromptCache:
            ids = encode(model.tokenizer, render(model.tokenizer, messages, server.base.chat))[0]
            if len(ids) > model.max_length:
                raise api_error(400, f"{len(ids)} tokens exceed {model.name}'s context of {model.max_length}",
                                param="messages")  # fmt: skip
            with server.model_lock:
                return server.store.prefill(model, ids, messages, server.base.chat)

        cache = await asyncio.to_thread(prefill)
        data = cache.to_bytes(getattr(torch, req.dtype) if req.dtype else None)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-C2C-Tokens": str(len(cache)), "X-C2C-Model": model.name,
                                 "X-C2C-Bytes-Per-Token": f"{len(data) / max(1, len(cache)):.1f}"})  # fmt: skip

    @app.post("/v1/caches/import")
    async def import_cache(request: Request):
        body = await request.body()
        try:
            cache = PromptCache.from_bytes(body)
        except C2CError as e:
            raise api_error(400, str(e)) from None
        models = served_models()
        model = next((m for m in models.values() if identity_of(m).fingerprint == cache.identity.fingerprint), None)
        if model is None:
            raise api_error(400, f"this cache was made by {cache.identity.name} ({cache.identity.fingerprint}), "
                            "which this server does not serve")  # fmt: skip
        server.store.put(cache.to(model.device, model.model.dtype))
        return {"model": model.name, "tokens": len(cache), "bytes": cache.nbytes}
