"""Signed cache messages: every honest payload accepted, every tampered one refused with one line, nothing stored
on refusal; the key never shows; a property-based test over the signed header."""

import json
import random
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cache2cache.caches.identity import identity_of
from cache2cache.caches.prompt_cache import PromptCache, measure_scale
from cache2cache.caches.signing import MAGIC, CacheKeys, open_signed, validate
from cache2cache.caches.store import PrefixStore
from cache2cache.errors import C2CError

from .conftest import tiny

KEYS = CacheKeys({"old": b"an-older-secret-0123456789", "new": b"the-current-secret-0123456789"}, "new")
OTHER = CacheKeys({"new": b"an-attackers-secret-0123456789"}, "new")
MODELS = ["tiny-llama", "tiny-qwen2", "tiny-gemma3"]
WORDS = "the ship keeper light night blue book 42 café 東京 code def return x + y answer why".split()


def _conversation(rng: random.Random) -> list[dict]:
    turns = [{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))}]
    if rng.random() < 0.4:
        turns += [{"role": "assistant", "content": " ".join(rng.choices(WORDS, k=3))},
                  {"role": "user", "content": " ".join(rng.choices(WORDS, k=4))}]  # fmt: skip
    return turns


@pytest.fixture(scope="module")
def scales():
    return {name: measure_scale(tiny(name)) for name in MODELS}


def _receive(data: bytes, store: PrefixStore, scales, keys: CacheKeys = KEYS, conversation=None) -> PromptCache:
    """What a receiving process does: verify, validate against the model it names, then store."""
    cache = PromptCache.from_bytes(data, key=keys)
    name = cache.identity.name
    if name not in scales:
        raise C2CError(f"{name} is not served here")
    model = tiny(name)
    validate(cache, identity_of(model), scales[name], model.tokenizer)
    if conversation is not None and cache.messages != conversation:
        raise C2CError("this cache is of another conversation")
    store.put(cache)
    return cache


def _honest(n: int, seed: int = 0) -> list[tuple[bytes, list[dict]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        model = tiny(MODELS[i % len(MODELS)])
        conv = _conversation(rng)
        cache = PromptCache.prefill(model, conv)
        dtype = [None, torch.bfloat16, torch.float16][i % 3]
        out.append((cache.to_bytes(dtype, key=KEYS if i % 5 else CacheKeys(KEYS.secrets, "old")), conv))
    return out


def _tamper(data: bytes, rng: random.Random, kind: str) -> bytes:
    n = struct.unpack("<I", data[8:12])[0]
    head_end = 12 + n
    if kind == "flip_header":
        i = rng.randrange(0, head_end)
    elif kind == "flip_data":
        i = rng.randrange(head_end, len(data))
    if kind.startswith("flip"):
        b = bytearray(data)
        b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == "truncate":
        return data[:rng.randrange(0, len(data))]
    cache = PromptCache.from_bytes(data, key=KEYS)
    keys_used = KEYS
    if kind == "swap_layers":
        cache.keys[0], cache.keys[1] = cache.keys[1], cache.keys[0]
        keys_used = None  # an attacker without the key re-packs: the old manifest stays
    elif kind == "scale":
        cache.values = [v * 1000 for v in cache.values]  # re-signed with a leaked key: the scale check must hold
    elif kind == "nan":
        cache.keys[rng.randrange(len(cache.keys))][0, 0, 0] = float(rng.choice(["nan", "inf"]))
    elif kind == "other_key":
        keys_used = OTHER
    elif kind == "forged_identity":
        from dataclasses import replace

        cache.identity = replace(cache.identity, fingerprint="0123456789abcdef")
    elif kind == "noise_unsigned":
        cache.values = [v + torch.randn_like(v) for v in cache.values]
        return cache.to_bytes()
    if keys_used is None:
        payload = cache.to_bytes(cache.dtype)
        return data[:head_end] + payload
    return cache.to_bytes(cache.dtype, key=keys_used)


KINDS = ["flip_header", "flip_data", "truncate", "swap_layers", "scale", "nan", "other_key", "forged_identity",
         "noise_unsigned", "replay"]


def test_500_honest_payloads_accepted_and_500_tampered_refused_with_nothing_stored(scales):
    honest = _honest(510)
    store = PrefixStore(1 << 30)
    for data, conv in honest:
        _receive(data, store, scales, conversation=conv)
    assert store.stats.entries > 0
    snapshot = {k: (c.token_ids, [t.clone() for t in c.keys]) for k, c in store._entries.items()}
    rng = random.Random(1)
    refused = {k: 0 for k in KINDS}
    for j in range(520):
        kind = KINDS[j % len(KINDS)]
        data, conv = honest[j % len(honest)]
        if kind == "replay":  # a valid cache presented for another conversation
            other = honest[(j + 1) % len(honest)][1]
            with pytest.raises(C2CError):
                _receive(data, PrefixStore(), scales, conversation=other if other != conv else other + conv)
            refused[kind] += 1
            continue
        bad = _tamper(data, rng, kind)
        try:
            _receive(bad, store, scales, conversation=conv)
        except C2CError as e:
            assert "\n" not in str(e)
            refused[kind] += 1
            continue
        pytest.fail(f"tampered payload accepted ({kind})")
    assert sum(refused.values()) == 520 and all(refused.values())
    after = {k: (c.token_ids, c.keys) for k, c in store._entries.items()}
    assert after.keys() == snapshot.keys()
    for k, (ids, keys) in snapshot.items():
        assert after[k][0] == ids and all(torch.equal(a, b) for a, b in zip(after[k][1], keys))


def test_keys_load_from_files_and_env_and_never_show(tmp_path, monkeypatch):
    f = tmp_path / "k.json"
    f.write_text(json.dumps({"active": "b", "keys": {"a": "00" * 16, "b": "a-plain-text-secret-value"}, "ttl_s": 60}))
    keys = CacheKeys.from_file(f)
    assert keys.active == "b" and keys.ttl_s == 60 and "plain-text" not in repr(keys) and "00000" not in str(keys)
    plain = tmp_path / "k.txt"
    plain.write_text("just-one-secret-of-enough-length\n")
    assert CacheKeys.from_file(plain).secrets == {"default": b"just-one-secret-of-enough-length"}
    monkeypatch.setenv("C2C_CACHE_KEY", "k1:first-secret-of-length,k2:second-secret-of-length")
    env = CacheKeys.from_env()
    assert env.active == "k1" and set(env.secrets) == {"k1", "k2"}
    for bad in ("{not json", json.dumps({"keys": {"a": "short"}}), json.dumps({"keys": {}})):
        f.write_text(bad)
        with pytest.raises(C2CError):
            CacheKeys.from_file(f)
    with pytest.raises(C2CError, match="not found"):
        CacheKeys.from_file(tmp_path / "missing")


def test_expiry_and_unsigned_or_signed_without_key(tmp_path):
    model = tiny("tiny-llama")
    cache = PromptCache.prefill(model, "hello there")
    short = CacheKeys(KEYS.secrets, "new", ttl_s=10)
    data = cache.to_bytes(key=short)
    payload, manifest = open_signed(data, KEYS)
    assert manifest["tokens"] == len(cache)
    with pytest.raises(C2CError, match="expired"):
        open_signed(data, KEYS, now=manifest["created"] + 11)
    with pytest.raises(C2CError, match="needs the cache key"):
        PromptCache.from_bytes(data)
    with pytest.raises(C2CError, match="unsigned"):
        PromptCache.from_bytes(cache.to_bytes(), key=KEYS)
    path = cache.save(tmp_path / "c.bin", key=KEYS)
    assert PromptCache.load(path, key=KEYS).token_ids == cache.token_ids


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 1 << 32 - 1), st.binary(max_size=256))
def test_any_signed_header_either_verifies_or_fails_with_one_line(prefix, length, rest):
    for data in (MAGIC + struct.pack("<I", length % (1 << 32)) + rest, MAGIC + prefix + rest, prefix):
        try:
            open_signed(data, KEYS)
        except C2CError as e:
            assert "\n" not in str(e)
        else:
            pytest.fail("random bytes verified")


def test_agents_messages_travel_signed_and_are_validated_on_arrival():
    from cache2cache.agents import Team

    team = Team()
    team.agent("answerer", tiny("tiny-llama"))
    reader = team.agent("reader", tiny("tiny-qwen2"))
    note = reader.read("The lighthouse keeper counted ships every night.")
    wire = note.to_bytes(KEYS)
    back = team.receive(wire, KEYS)
    assert back.sender == "reader" and back.cache.token_ids == note.cache.token_ids
    with pytest.raises(C2CError, match="unsigned"):
        team.receive(note.to_bytes(), KEYS)
    note.cache.values = [v * 1000 for v in note.cache.values]
    with pytest.raises(C2CError, match="exceed"):
        team.receive(note.to_bytes(KEYS), KEYS)
    stranger = PromptCache.from_bytes(wire, key=KEYS)
    stranger.meta["sender"] = "stranger"
    with pytest.raises(C2CError, match="not in this team"):
        team.receive(stranger.to_bytes(key=KEYS), KEYS)
