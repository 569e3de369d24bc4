"""KV transfer across two `c2c serve` processes on loopback: one prefills and exports the sharer's cache, the
other imports it and answers C2C from it without running the sharer over those tokens. The servers share a cache
key (signed exports, verified imports and fetches); a server without one refuses imports unless told otherwise."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

from cache2cache import C2CModel, GenerateOptions
from cache2cache.caches.prompt_cache import PromptCache
from cache2cache.caches.signing import CacheKeys

from ..conftest import make_fuser, tiny

MESSAGES = [{"role": "user", "content": "A lighthouse keeper counts ships every night and writes their names down. "
                                        "Why would he do that?"}]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KEYS = CacheKeys({"k1": b"0123456789abcdef-shared-secret"}, "k1")


def _serve(fuser_dir, port: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cache2cache.cli.main", "serve", "--receiver", "tiny-llama", "--sharer",
           "tiny-qwen2", "--fuser", str(fuser_dir), "--port", str(port), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def _wait(url: str, proc: subprocess.Popen) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def _reused(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^c2c_prefix_store_reused_tokens (\S+)$", text, re.M).group(1))


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory):
    receiver, sharer = tiny("tiny-llama"), tiny("tiny-qwen2")
    fuser = make_fuser(receiver, sharer)
    fuser_dir = fuser.save_pretrained(tmp_path_factory.mktemp("fuser") / "f")
    key_file = tmp_path_factory.mktemp("key") / "key.json"
    key_file.write_text('{"active": "k1", "keys": {"k1": "0123456789abcdef-shared-secret"}}')
    ports = [_free_port(), _free_port(), _free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    key = ("--cache-key-file", str(key_file))
    procs = [_serve(fuser_dir, ports[0], *key), _serve(fuser_dir, ports[1], *key),
             _serve(fuser_dir, ports[2], "--sharer-url", urls[0], *key)]  # the third has no sharer weights
    try:
        for url, proc in zip(urls, procs):
            _wait(url, proc)
        yield urls[:2], C2CModel(receiver, [sharer], [fuser]), urls[2]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


def test_a_cache_made_in_one_process_answers_in_another(two_servers):
    (sharer_url, receiver_url), local, _ = two_servers
    exported = httpx.post(f"{sharer_url}/v1/caches", json={"model": "tiny-qwen2", "messages": MESSAGES}, timeout=60)
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/octet-stream"
    cache = PromptCache.from_bytes(exported.content, key=KEYS)
    assert cache.identity.name == "tiny-qwen2" and int(exported.headers["X-C2C-Tokens"]) == len(cache)
    before = _reused(receiver_url)
    imported = httpx.post(f"{receiver_url}/v1/caches/import", content=exported.content,
                          headers={"content-type": "application/octet-stream"}, timeout=60)  # fmt: skip
    assert imported.status_code == 200 and imported.json() == {"model": "tiny-qwen2", "tokens": len(cache),
                                                                "bytes": cache.nbytes, "translated": False}  # fmt: skip
    answer = httpx.post(f"{receiver_url}/v1/chat/completions", timeout=60,
                        json={"model": "c2c", "messages": MESSAGES, "max_tokens": 8, "temperature": 0}).json()
    # the receiver process did not run the sharer over the imported tokens ...
    assert _reused(receiver_url) - before >= len(cache)
    # ... and answers exactly as a local C2C run does
    want = local.generate([MESSAGES], "c2c", GenerateOptions(8)).results[0].text
    assert answer["choices"][0]["message"]["content"] == want


def test_the_16_bit_wire_halves_the_bytes_and_bad_imports_are_refused(two_servers):
    (sharer_url, receiver_url), _, _ = two_servers
    body = {"model": "tiny-qwen2", "messages": MESSAGES}
    full = httpx.post(f"{sharer_url}/v1/caches", json=body, timeout=60).content
    half = httpx.post(f"{sharer_url}/v1/caches", json={**body, "dtype": "bfloat16"}, timeout=60).content
    assert PromptCache.from_bytes(half, key=KEYS).nbytes * 2 == PromptCache.from_bytes(full, key=KEYS).nbytes
    assert len(half) < 0.6 * len(full)
    junk = httpx.post(f"{receiver_url}/v1/caches/import", content=b"\x00" * 64, timeout=30)
    assert junk.status_code == 400 and "unsigned cache refused" in junk.json()["error"]["message"]
    flipped = bytearray(full)
    flipped[len(flipped) // 2] ^= 0x10
    tampered = httpx.post(f"{receiver_url}/v1/caches/import", content=bytes(flipped), timeout=30)
    assert tampered.status_code == 400 and "does not match its manifest" in tampered.json()["error"]["message"]
    forged = CacheKeys({"k1": b"someone-elses-secret-key"}, "k1")
    wrong_key = PromptCache.from_bytes(full, key=KEYS).to_bytes(key=forged)
    refused_mac = httpx.post(f"{receiver_url}/v1/caches/import", content=wrong_key, timeout=30)
    assert refused_mac.status_code == 400 and "bad signature" in refused_mac.json()["error"]["message"]
    other = PromptCache.prefill(tiny("tiny-gemma3"), "hello").to_bytes(key=KEYS)
    refused = httpx.post(f"{receiver_url}/v1/caches/import", content=other, timeout=30)
    assert refused.status_code == 400 and "does not serve" in refused.json()["error"]["message"]
    unknown = httpx.post(f"{sharer_url}/v1/caches", json={**body, "model": "nope"}, timeout=30)
    assert unknown.status_code == 404


def test_a_receiver_without_sharer_weights_fetches_caches_from_the_sharer_service(two_servers):
    (sharer_url, _), local, remote_url = two_servers
    assert [m["id"] for m in httpx.get(f"{remote_url}/v1/models").json()["data"]] == \
        ["tiny-llama", "receiver", "c2c", "c2c/tiny-qwen2"]  # fmt: skip
    question = [{"role": "user", "content": "Where do the ships go at night?"}]
    answer = httpx.post(f"{remote_url}/v1/chat/completions", timeout=60,
                        json={"model": "c2c", "messages": question, "max_tokens": 8, "temperature": 0}).json()
    # bf16 on the wire: the tiny fp32 sharer's keys are rounded, so compare with a local run from rounded caches
    assert answer["choices"][0]["message"]["content"] == _from_rounded(local, question, 8)
    sharer_alone = httpx.post(f"{remote_url}/v1/chat/completions", timeout=30,
                              json={"model": "tiny-qwen2", "messages": question})  # fmt: skip
    assert sharer_alone.status_code == 404 and sharer_url in sharer_alone.json()["error"]["message"]


def test_without_a_key_imports_are_refused_unless_the_operator_allows_them(tmp_path):
    receiver, sharer = tiny("tiny-llama"), tiny("tiny-qwen2")
    fuser_dir = make_fuser(receiver, sharer).save_pretrained(tmp_path / "f")
    ports = [_free_port(), _free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs = [_serve(fuser_dir, ports[0]), _serve(fuser_dir, ports[1], "--allow-unsigned-caches")]
    try:
        for url, proc in zip(urls, procs):
            _wait(url, proc)
        data = PromptCache.prefill(sharer, MESSAGES).to_bytes()
        closed = httpx.post(f"{urls[0]}/v1/caches/import", content=data, timeout=30)
        assert closed.status_code == 403 and "--cache-key-file" in closed.json()["error"]["message"]
        opened = httpx.post(f"{urls[1]}/v1/caches/import", content=data, timeout=30)
        assert opened.status_code == 200
        scaled = PromptCache.from_bytes(data)
        scaled.values = [v * 1000 for v in scaled.values]
        extreme = httpx.post(f"{urls[1]}/v1/caches/import", content=scaled.to_bytes(), timeout=30)
        assert extreme.status_code == 400 and "exceed what the model produces" in extreme.json()["error"]["message"]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
    run = subprocess.run([sys.executable, "-m", "cache2cache.cli.main", "serve", "--receiver", "tiny-llama",
                          "--sharer", "tiny-qwen2", "--sharer-url", "http://127.0.0.1:1"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "--cache-key-file" in run.stderr and "Traceback" not in run.stderr


def _from_rounded(local, messages, n: int) -> str:
    """C2C with the sharer's cache rounded to bfloat16 and back, as it arrives over the 16-bit wire."""
    import torch

    from cache2cache.caches.store import PrefixStore

    sharer = local.sharers[0]
    ids = local.aligners[0].align(messages).sharer_ids
    store = PrefixStore()
    cache = PromptCache.from_bytes(PromptCache.prefill(sharer, messages).to_bytes(torch.bfloat16))
    assert cache.token_ids == ids
    store.put(cache.to(dtype=torch.float32))
    model = C2CModel(local.receiver, [sharer], local.fusers, store=store)
    return model.generate([messages], "c2c", GenerateOptions(n)).results[0].text


BRIEF = "The lighthouse on Gull Rock has a green lamp and was built in 1874 by a keeper named Ada."
QUESTION = [{"role": "user", "content": "Question: What colour is the lamp?\nAnswer:"}]


@pytest.fixture(scope="module")
def translated_servers(tmp_path_factory):
    """A sharer host (both models, a translator) and a receiver host with the same translator but no sharer
    weights: it answers model "translated" from heads it fetches from the sharer host or that are imported."""
    from cache2cache.translation.fit import accumulate, solve

    from ..test_translation import TEXTS

    receiver, sharer = tiny("tiny-llama"), tiny("tiny-qwen2")
    base = tmp_path_factory.mktemp("translated")
    translator = solve(accumulate(receiver, sharer, TEXTS, base / "s.safetensors"), progress=False)
    t_dir = translator.save_pretrained(base / "t")
    fuser_dir = make_fuser(receiver, sharer).save_pretrained(base / "f")
    key_file = base / "key.json"
    key_file.write_text('{"active": "k1", "keys": {"k1": "0123456789abcdef-shared-secret"}}')
    ports = [_free_port(), _free_port(), _free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    common = ("--translator", str(t_dir), "--cache-key-file", str(key_file))
    procs = [_serve(fuser_dir, ports[0], *common)]
    remote = [sys.executable, "-m", "cache2cache.cli.main", "serve", "--receiver", "tiny-llama", "--sharer",
              "tiny-qwen2", "--port", str(ports[1]), "--sharer-url", urls[0], *common]  # fmt: skip
    procs.append(subprocess.Popen(remote, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}))  # fmt: skip
    procs.append(_serve(fuser_dir, ports[2], *common, "--own-tokens", "0.5"))  # a sharer host under the token knob
    try:
        for url, proc in zip(urls, procs):
            _wait(url, proc)
        yield urls, C2CModel(receiver, [sharer], [], translators=[translator])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


def test_a_receiver_host_without_sharer_weights_answers_from_fetched_translated_briefs(translated_servers):
    (sharer_url, remote_url, _), local = translated_servers
    assert [m["id"] for m in httpx.get(f"{remote_url}/v1/models").json()["data"]] == \
        ["tiny-llama", "receiver", "translated", "translated/tiny-qwen2"]  # fmt: skip
    body = {"model": "translated", "messages": QUESTION, "brief": BRIEF, "max_tokens": 6, "temperature": 0}
    answer = httpx.post(f"{remote_url}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    # what a local translated run answers from the head rounded to bfloat16, as it crossed the wire
    import torch

    from cache2cache.inference.batching import Briefed

    head = local.heads.head(QUESTION, BRIEF)
    local.heads.store.put(PromptCache.from_bytes(head.to_bytes(torch.bfloat16)).to(dtype=torch.float32),
                                 local.heads.space())  # fmt: skip
    want = local.generate([Briefed(QUESTION, BRIEF)], "translated", GenerateOptions(6)).results[0].text
    assert answer.json()["choices"][0]["message"]["content"] == want
    again = {**body, "messages": [{"role": "user", "content": "Question: Who built it?\nAnswer:"}]}
    assert httpx.post(f"{remote_url}/v1/chat/completions", json=again, timeout=60).status_code == 200
    no_brief = httpx.post(f"{remote_url}/v1/chat/completions", json={**body, "brief": ""}, timeout=30)
    assert no_brief.status_code == 400 and "brief" in no_brief.json()["error"]["message"]


def test_translated_heads_export_with_their_translator_and_import_only_where_it_is_served(translated_servers):
    (sharer_url, remote_url, _), local = translated_servers
    req = {"model": "translated/tiny-qwen2", "messages": QUESTION, "brief": BRIEF, "dtype": "bfloat16"}
    exported = httpx.post(f"{sharer_url}/v1/caches", json=req, timeout=60)
    assert exported.status_code == 200, exported.text
    cache = PromptCache.from_bytes(exported.content, key=KEYS)
    assert cache.identity.name == "tiny-llama" and cache.meta["translator"] == local.heads.fingerprint()
    assert cache.meta["translated_from"] == "tiny-qwen2"
    assert cache.token_ids == local.heads.head(QUESTION, BRIEF).token_ids
    imported = httpx.post(f"{remote_url}/v1/caches/import", content=exported.content, timeout=60).json()
    assert imported["translated"] is True and imported["tokens"] == len(cache)
    cache.meta["translator"] = "0" * 16  # a translator the receiver host does not serve
    foreign = httpx.post(f"{remote_url}/v1/caches/import", content=cache.to_bytes(key=KEYS), timeout=30)
    assert foreign.status_code == 400 and "does not serve" in foreign.json()["error"]["message"]
    cache.meta.update(translator=local.heads.fingerprint(), own_tokens=0.5, pick="facts")  # another knob
    knob = httpx.post(f"{remote_url}/v1/caches/import", content=cache.to_bytes(key=KEYS), timeout=30)
    assert knob.status_code == 400 and "'+tokens:0.5:facts'" in knob.json()["error"]["message"]
    cache.meta.update(own_tokens="half")
    bad = httpx.post(f"{remote_url}/v1/caches/import", content=cache.to_bytes(key=KEYS), timeout=30)
    assert bad.status_code == 400 and "malformed" in bad.json()["error"]["message"]
    no_brief = httpx.post(f"{sharer_url}/v1/caches", json={**req, "brief": " "}, timeout=30)
    assert no_brief.status_code == 400 and "brief" in no_brief.json()["error"]["message"]
    too_long = httpx.post(f"{sharer_url}/v1/caches", json={**req, "brief": "lamp " * 1500}, timeout=60)
    assert too_long.status_code == 400 and "context" in too_long.json()["error"]["message"]
    no_weights = httpx.post(f"{remote_url}/v1/caches", json=req, timeout=30)
    assert no_weights.status_code == 404 and "no translated caches" in no_weights.json()["error"]["message"]


def test_a_host_under_the_token_knob_answers_as_the_library_does_and_its_heads_stay_under_it(translated_servers):
    """`c2c serve --own-tokens 0.5`: model "translated" answers what the library answers under the same knob; the
    head it exports says so, and a host serving no knob refuses to import it."""
    from cache2cache.inference.batching import Briefed
    from cache2cache.translation.recompute import Recompute

    (_, remote_url, knob_url), local = translated_servers
    body = {"model": "translated", "messages": QUESTION, "brief": BRIEF, "max_tokens": 6, "temperature": 0}
    answer = httpx.post(f"{knob_url}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    knob = C2CModel(local.receiver, local.sharers, [], translators=local.heads.translators,
                    recompute=Recompute(own_tokens=0.5))  # fmt: skip
    want = knob.generate([Briefed(QUESTION, BRIEF)], "translated", GenerateOptions(6)).results[0].text
    assert answer.json()["choices"][0]["message"]["content"] == want
    req = {"model": "translated/tiny-qwen2", "messages": QUESTION, "brief": BRIEF}
    exported = httpx.post(f"{knob_url}/v1/caches", json=req, timeout=60)
    assert exported.status_code == 200, exported.text
    assert PromptCache.from_bytes(exported.content, key=KEYS).meta["own_tokens"] == 0.5
    refused = httpx.post(f"{remote_url}/v1/caches/import", content=exported.content, timeout=30)
    assert refused.status_code == 400 and "'+tokens:0.5:facts'" in refused.json()["error"]["message"]
