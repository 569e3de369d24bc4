"""Signed cache messages: an HMAC-SHA256 manifest around a cache file, and the checks a receiving process runs
before a cache reaches a prefix store or a model.

A cache decides what a model "has read", so a cache from another process is input to be verified, not trusted.
The signed form of a cache file is

    MAGIC (8 bytes) | manifest length (4 bytes, little-endian) | manifest (JSON) | payload (the cache file)

The manifest names the producing model (name, fingerprint, KV geometry), the dtype, the token count and a
SHA-256 of the token ids, the creation time (and an optional expiry), the payload's length and SHA-256, and the
key id; `mac` is HMAC-SHA256 over the rest of the manifest under the secret of that key id. Several key ids can
be accepted at once (rotation); the first one signs. Secrets come from a file or an environment variable, never
from a command line, and appear in no message, log or response (`CacheKeys` never prints them).

What a signature proves: the bytes were produced by a holder of the key and not changed since. What it does not:
that a holder of the key (or whoever stole it) sent sensible numbers. So verified caches are also *validated*
(`validate`): the producing model must be one served here, every tensor must have the shape its geometry and
token count imply, every value must be finite and within a bound measured on the model itself (`ScaleProfile`),
and the tokens must be the ones the cache's own conversation renders to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import C2CError

MAGIC = b"C2CSIG1\n"
MAX_MANIFEST_BYTES = 1 << 16
ENV_VAR = "C2C_CACHE_KEY"
SCALE_MARGIN = 8.0  # a cache may exceed the largest magnitude measured on the model by this factor, no more
CALIBRATION_TEXT = (
    "The committee met on 3 March 1998 in Geneva. def area(r):\n    return 3.14159 * r ** 2\n"
    "Photosynthesis turns light, water and CO2 into glucose; mitochondria release the energy. "
    "¿Dónde está la biblioteca? 東京は日本の首都です。 Q: What is 17 * 23? A: 391. "
)


@dataclass(frozen=True)
class CacheKeys:
    """Shared secrets by key id; `active` signs, every id verifies; optional lifetime of a signed cache."""

    secrets: dict[str, bytes]
    active: str
    ttl_s: float | None = None

    def __post_init__(self) -> None:
        if not self.secrets or self.active not in self.secrets:
            raise C2CError("cache keys: no secret for the active key id")
        for kid, secret in self.secrets.items():
            if not kid or len(kid) > 64 or len(secret) < 16:
                raise C2CError(f"cache key {kid[:64]!r}: key ids are 1-64 characters, secrets at least 16 bytes")

    def __repr__(self) -> str:  # never the secrets
        return f"CacheKeys(key_ids={sorted(self.secrets)}, active={self.active!r}, ttl_s={self.ttl_s})"

    __str__ = __repr__

    @classmethod
    def from_file(cls, path: str | Path) -> "CacheKeys":
        """A JSON file {"active": ID, "keys": {ID: SECRET, ...}, "ttl_s": N} or a text file holding one secret
        (key id "default"). Secrets are hex, base64 or plain text of at least 16 bytes."""
        path = Path(path)
        if not path.is_file():
            raise C2CError(f"cache key file not found or not a file: {path}")
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            raise C2CError(f"cache key file {path} is not readable text") from None
        if not text.startswith("{"):
            return cls({"default": _secret(text)}, "default")
        try:
            raw = json.loads(text)
            keys = {str(k): _secret(str(v)) for k, v in raw["keys"].items()}
            ttl = raw.get("ttl_s")
            if ttl is not None and not (isinstance(ttl, (int, float)) and ttl > 0):
                raise ValueError("ttl_s must be a positive number")
            return cls(keys, str(raw.get("active") or next(iter(keys))), ttl)
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError, StopIteration) as e:
            raise C2CError(f"cache key file {path}: expected {{\"active\": ID, \"keys\": {{ID: SECRET}}}} "
                           f"({type(e).__name__})") from None  # fmt: skip

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> "CacheKeys | None":
        """`ID:SECRET[,ID:SECRET...]` (the first signs) or a bare secret, from the environment; None if unset."""
        text = os.environ.get(var, "").strip()
        if not text:
            return None
        pairs = [p.partition(":") for p in text.split(",")]
        if all(sep for _, sep, _ in pairs):
            return cls({k: _secret(v) for k, _, v in pairs}, pairs[0][0])
        return cls({"default": _secret(text)}, "default")

    def mac(self, kid: str, manifest: dict) -> str:
        return hmac.new(self.secrets[kid], _canonical(manifest), hashlib.sha256).hexdigest()


def _secret(text: str) -> bytes:
    text = text.strip()
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True)):
        try:
            raw = decode(text)
            if len(raw) >= 16:
                return raw
        except ValueError:
            pass
    return text.encode()


def _canonical(manifest: dict) -> bytes:
    return json.dumps({k: v for k, v in manifest.items() if k != "mac"}, sort_keys=True, separators=(",", ":")).encode()


def token_hash(ids: list[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(ids)}q", *ids)).hexdigest()


def is_signed(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def sign(payload: bytes, facts: dict, keys: CacheKeys, now: float | None = None) -> bytes:
    """Wrap a cache file's bytes with a manifest of `facts` (model, dtype, tokens, token_hash) and its MAC."""
    created = time.time() if now is None else now
    manifest = {"v": 1, "key_id": keys.active, **facts, "created": created,
                "expires": created + keys.ttl_s if keys.ttl_s else None,
                "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest()}  # fmt: skip
    manifest["mac"] = keys.mac(keys.active, manifest)
    head = json.dumps(manifest, sort_keys=True).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + payload


def open_signed(data: bytes, keys: CacheKeys, now: float | None = None, max_bytes: int | None = None
                ) -> tuple[bytes, dict]:  # fmt: skip
    """Verify a signed cache message; returns (payload, manifest). Raises C2CError with one line otherwise."""
    if max_bytes is not None and len(data) > max_bytes:
        raise C2CError(f"signed cache of {len(data)} bytes exceeds the limit of {max_bytes}")
    if not is_signed(data):
        raise C2CError("unsigned cache refused (this process verifies cache signatures)")
    if len(data) < len(MAGIC) + 4:
        raise C2CError("signed cache truncated")
    (n,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if n > MAX_MANIFEST_BYTES or start + n > len(data):
        raise C2CError("signed cache truncated or with an oversized manifest")
    try:
        manifest = json.loads(data[start:start + n])
        if not isinstance(manifest, dict):
            raise ValueError
        kid, mac = manifest["key_id"], manifest["mac"]
        if not isinstance(kid, str) or not isinstance(mac, str):
            raise ValueError
    except (ValueError, KeyError, UnicodeDecodeError):
        raise C2CError("signed cache has a malformed manifest") from None
    if kid not in keys.secrets:
        raise C2CError(f"signed cache uses an unknown key id ({kid[:64]!r})")
    if not hmac.compare_digest(keys.mac(kid, manifest), mac):
        raise C2CError("signed cache: bad signature (tampered, or signed with another key)")
    payload = data[start + n:]
    if len(payload) != manifest.get("payload_bytes") or hashlib.sha256(payload).hexdigest() != manifest.get(
            "payload_sha256"):  # fmt: skip
        raise C2CError("signed cache: payload does not match its manifest (truncated or changed)")
    expires = manifest.get("expires")
    if expires is not None and (time.time() if now is None else now) > float(expires):
        raise C2CError("signed cache expired")
    return payload, manifest


# ---- validation: what a correct signature cannot vouch for --------------------------------------------------


@dataclass(frozen=True)
class ScaleProfile:
    """Per layer, the largest |key| and |value| a model produced on a calibration text: a cache whose values go
    far beyond (SCALE_MARGIN times) is refused even when correctly signed. Measured by `prompt_cache.measure_scale`."""

    fingerprint: str
    keys: tuple[float, ...]
    values: tuple[float, ...]


def validate(cache, expected, scale: ScaleProfile | None = None, tokenizer=None, manifest: dict | None = None) -> None:
    """Raise C2CError unless `cache` (a PromptCache) could have been produced by the model of identity `expected`:
    same identity, tensor shapes that match its geometry and token count, finite values within `scale`, the
    manifest's facts (when signed), and token ids that its own conversation renders to (with `tokenizer`)."""
    from ..alignment.tokens import encode, render

    expected.check(cache.identity, "this cache")
    if cache.identity.geometry != expected.geometry:
        raise C2CError("this cache's KV geometry is not its model's")
    n = len(cache.token_ids)
    for i, (g, k, v) in enumerate(zip(expected.geometry.layers, cache.keys, cache.values)):
        if tuple(k.shape) != (g.kv_heads, n, g.head_dim) or tuple(v.shape) != (g.kv_heads, n, g.head_dim):
            raise C2CError(f"cache layer {i} has shape {tuple(k.shape)}, not {(g.kv_heads, n, g.head_dim)}")
        for name, t in (("keys", k), ("values", v)):
            if not torch.isfinite(t).all():
                raise C2CError(f"cache layer {i} {name} hold non-finite values")
            if scale is not None:
                bound = SCALE_MARGIN * (scale.keys if name == "keys" else scale.values)[i]
                if float(t.float().abs().max()) > bound:
                    raise C2CError(f"cache layer {i} {name} exceed what the model produces ({bound:.3g})")
    if manifest is not None:
        facts = {"model": cache.identity.to_dict(), "tokens": n, "token_hash": token_hash(cache.token_ids),
                 "dtype": str(cache.dtype).removeprefix("torch.")}  # fmt: skip
        for key, value in facts.items():
            if manifest.get(key) != value:
                raise C2CError(f"signed cache: the manifest's {key} does not match the cache")
    if tokenizer is not None and cache.messages:
        ids = encode(tokenizer, render(tokenizer, cache.messages, cache.chat))[0]
        if ids[:n] != cache.token_ids or n + 1 < len(ids):
            raise C2CError("this cache's tokens are not the conversation it claims to be")
