"""KV transfer between processes and hosts: caches as HTTP messages.

    POST /v1/caches          {"model": <a served model>, "messages": [...], "dtype": "bfloat16" | null}
                             -> the model's PromptCache of the conversation, as a cache file
                                (application/octet-stream; X-C2C-Tokens, X-C2C-Bytes-Per-Token headers)
                             {"model": "translated[/sharer]", "messages": [...], "brief": "..."}
                             -> the receiver's cache of the messages up to the brief's end, the brief
                                translated from the sharer's reading (meta: the translator's fingerprint)
    POST /v1/caches/import   a cache file as the body -> kept in this server's prefix store (a translated
                             head apart, for the translator that wrote it) -> {"model", "tokens", "bytes",
                             "translated"}

So a sharer service prefills a conversation and returns its cache; a receiver service imports it, and its next
c2c request over that conversation reads the sharer's keys and values from the store instead of running the
sharer (tokens the cache does not cover are still computed here). Started with `--sharer-url`, a receiver
service holds the sharers as skeletons (tokenizer and config, no weights) and fetches each c2c request's sharer
caches from that URL itself (`fetch_remote_caches`); with a --translator too, it answers model "translated"
from translated heads it fetches (`fetch_remote_translated`) or that were imported: the receiver host holds
neither the sharer's weights nor the brief's reading, only the receiver and the translator's fingerprint. The
imported cache must come from a model this server serves (same fingerprint), a translated one from a translator
it serves: anything else is refused. A 16-bit wire format halves a float32 cache.

Trust (caches/signing.py): with `--cache-key-file`, exported caches are signed and imported or fetched ones must
carry a valid signature under one of the server's key ids; every one is then validated (shapes, finite values
within a scale measured on the model, tokens that match its conversation, and for fetched caches the
conversation asked for) before it reaches the store. Without a key, imports and remote caches are refused unless
the operator passed `--allow-unsigned-caches`.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import httpx
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ..alignment.tokens import encode, render
from ..caches.identity import identity_of, known_identity, pin_identity
from ..caches.prompt_cache import PromptCache, measure_scale
from ..caches.signing import validate
from ..errors import C2CError
from ..inference.batching import sharer_messages, to_messages
from ..translation.recompute import Recompute
from .schemas import ApiError, ChatMessage


class CacheRequest(BaseModel):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    dtype: Literal["bfloat16", "float16"] | None = None
    brief: str | None = None  # with model "translated[/sharer]": the text the sharer reads and the receiver never


def translated_request(server, req: CacheRequest):
    """The C2CModel whose translated head `req` asks for, or None when it asks for a plain model's cache."""
    if req.model.partition("/")[0] != "translated":
        return None
    if server.config.sharer_url or not server.base.translators or req.model not in server.model_ids():
        raise ApiError(404, f"{req.model!r}: this server writes no translated caches (it needs a sharer with "
                            "weights and a --translator)", param="model", code="model_not_found")  # fmt: skip
    if not (req.brief or "").strip():
        raise ApiError(400, "a translated cache is the translation of a brief: send a non-empty \"brief\"",
                       param="brief")  # fmt: skip
    return server.route(req.model, None).model


async def fetch_remote_translated(server, model, prompt) -> None:
    """Ask the sharer service for the translated head of a briefed `prompt` (this host has no sharer weights)
    and file it where `model` looks for it; a cache of another brief, another receiver or another translator
    is refused."""
    messages = to_messages(prompt.prompt)
    try:
        ids, stored = model.heads.stored(messages, prompt.brief)
    except C2CError as e:
        raise ApiError(400, str(e), param="brief") from None
    if stored is not None:
        return  # fetched (or imported) before
    sharer = model.sharers[0].name
    body = {"model": f"translated/{sharer}", "messages": messages, "brief": prompt.brief, "dtype": "bfloat16"}
    cache = receive(server, await _post(server, body), status=502)
    if not claims_cache(model.receiver, cache) or cache.meta.get("translator") != model.heads.fingerprint():
        raise ApiError(502, f"the sharer service sent a cache that is not {model.receiver.name}'s translated by "
                            f"this server's translator from {sharer}")  # fmt: skip
    if cache.token_ids != ids:
        raise ApiError(502, "the sharer service sent the translation of another brief")
    same_knob(model, cache, status=502)
    check(server, model.receiver, cache, status=502)
    model.heads.store.put(cache.to(model.receiver.device, model.receiver.model.dtype),
                                 model.heads.space())  # fmt: skip


async def _post(server, body: dict) -> bytes:
    """POST /v1/caches to the sharer service; its refusals come back as this server's errors."""
    async with httpx.AsyncClient(base_url=server.config.sharer_url, timeout=600) as client:
        try:
            r = await client.post("/v1/caches", json=body)
        except httpx.HTTPError as e:
            raise ApiError(503, f"sharer service {server.config.sharer_url} unreachable: {e}",
                           kind="server_error") from None  # fmt: skip
    if r.status_code != 200:
        try:
            message = r.json().get("error", {}).get("message", r.text[:200])
        except ValueError:
            message = r.text[:200]
        raise ApiError(r.status_code if r.status_code < 500 else 502, f"sharer service: {message}")
    return r.content


async def fetch_remote_caches(server, model, prompt) -> None:
    """Ask the sharer service for each sharer's cache of `prompt` (16-bit on the wire) and put them in the store,
    pinning a skeleton sharer's identity to what the service reports."""
    messages = sharer_messages(prompt)  # with a brief, what the sharers read
    for sharer in model.sharers:
        data = await _post(server, {"model": sharer.name, "messages": messages, "dtype": "bfloat16"})
        cache = receive(server, data, status=502)
        if not claims_cache(sharer, cache):
            raise ApiError(502, f"the sharer service sent a cache of {cache.identity.name} "
                           f"({cache.identity.fingerprint}), not of this server's {sharer.name}")  # fmt: skip
        check(server, sharer, cache, status=502)
        want = encode(sharer.tokenizer, render(sharer.tokenizer, messages, server.base.chat))[0]
        if cache.token_ids != want:  # a valid cache of another conversation (a replay) reads as this one
            raise ApiError(502, "the sharer service sent a cache of another conversation")
        server.store.put(cache.to(sharer.device, sharer.model.dtype))


def receive(server, data: bytes, status: int = 400) -> PromptCache:
    """Parse a cache from another process: verified against the server's keys when it has them; unsigned only
    when the operator allowed it. Nothing is stored here."""
    keys = server.config.cache_keys
    if keys is None and not server.config.allow_unsigned_caches:
        raise ApiError(403, "this server accepts no caches from other processes: start it with --cache-key-file "
                            "(or, on a trusted network only, --allow-unsigned-caches)", kind="permission_error")
    try:
        return PromptCache.from_bytes(data, key=keys, max_bytes=server.config.max_cache_bytes)
    except C2CError as e:
        raise ApiError(status, str(e)) from None


def check(server, model, cache: PromptCache, status: int = 400) -> None:
    """What a signature cannot vouch for (signing.validate): shapes, finite values within the scale measured on
    the model (when it has weights here), tokens that render from the cache's own conversation."""
    if model.name not in server.scales:
        server.scales[model.name] = None if model.is_skeleton else measure_scale(model)
    try:
        validate(cache, identity_of(model), server.scales[model.name], model.tokenizer)
    except C2CError as e:
        raise ApiError(status, str(e)) from None


def same_knob(model, cache: PromptCache, status: int = 400) -> None:
    """Refuse a translated head written under another fidelity knob than `model` serves (`--own-*`): filed under
    this server's knob, it would answer as if this server's receiver had computed what it did not."""
    try:
        theirs, ours = Recompute.of(cache.meta).space(), model.heads.recompute.space()
    except (TypeError, ValueError):
        raise ApiError(status, "this translated cache names its fidelity knob in a malformed way") from None
    if theirs != ours:
        raise ApiError(status, f"this translated cache was written under the fidelity knob {theirs or 'none'!r}, this "
                               f"server serves {ours or 'none'!r}: start both hosts with the same --own-* options")


def claims_cache(model, cache: PromptCache) -> bool:
    """Whether `cache` was made by `model`. A skeleton (no weights here) takes the identity of the first cache
    that carries its name and geometry, and holds every later one to it."""
    if known_identity(model) is None:
        if cache.identity.name != model.name:
            return False
        try:
            pin_identity(model, cache.identity)
        except C2CError:
            return False
    return identity_of(model).fingerprint == cache.identity.fingerprint


def add_cache_routes(app: FastAPI, server) -> None:
    """Register the two routes on `app` (see the module docstring)."""

    def served_models() -> dict[str, object]:
        base = server.base
        return {m.name: m for m in [base.receiver, *base.sharers]}

    def translating_models() -> list:
        return [server.route(m, None).model for m in server.model_ids() if m.startswith("translated/")]

    @app.post("/v1/caches")
    async def export_cache(req: CacheRequest):
        translating = translated_request(server, req)
        model = translating.receiver if translating else served_models().get(req.model)
        if model is None:
            raise ApiError(404, f"model {req.model!r} is not served here (caches come from: "
                            f"{', '.join(served_models())})", param="model", code="model_not_found")  # fmt: skip
        messages = [m.model_dump() for m in req.messages]

        def prefill() -> PromptCache:
            if translating:
                try:
                    with server.model_lock:
                        return translating.heads.head(messages, req.brief)
                except C2CError as e:
                    raise ApiError(400, str(e), param="brief") from None
            ids = encode(model.tokenizer, render(model.tokenizer, messages, server.base.chat))[0]
            if len(ids) > model.max_length:
                raise ApiError(400, f"{len(ids)} tokens exceed {model.name}'s context of {model.max_length}",
                                param="messages")  # fmt: skip
            with server.model_lock:
                return server.store.prefill(model, ids, messages, server.base.chat)

        cache = await asyncio.to_thread(prefill)
        data = cache.to_bytes(getattr(torch, req.dtype) if req.dtype else None, server.config.cache_keys)
        return Response(data, media_type="application/octet-stream",
                        headers={"X-C2C-Tokens": str(len(cache)), "X-C2C-Model": model.name,
                                 "X-C2C-Bytes-Per-Token": f"{len(data) / max(1, len(cache)):.1f}"})  # fmt: skip

    @app.post("/v1/caches/import")
    async def import_cache(request: Request):
        body = await request.body()
        cache = receive(server, body)
        model = next((m for m in served_models().values() if claims_cache(m, cache)), None)
        if model is None:
            raise ApiError(400, f"this cache was made by {cache.identity.name} ({cache.identity.fingerprint}), "
                            "which this server does not serve")  # fmt: skip
        await asyncio.to_thread(check, server, model, cache)
        space = ""
        if "translator" in cache.meta:  # a translated head: filed for the translator that wrote it, if served here
            pair = next((p for p in translating_models() if p.heads.fingerprint() == cache.meta["translator"]),
                        None)  # fmt: skip
            if pair is None:
                raise ApiError(400, f"this translated cache was written by translator {cache.meta['translator']}, "
                                    "which this server does not serve")  # fmt: skip
            same_knob(pair, cache)
            space = pair.heads.space()
        server.store.put(cache.to(model.device, model.model.dtype), space)
        return {"model": model.name, "tokens": len(cache), "bytes": cache.nbytes,
                "translated": bool(space)}  # fmt: skip

