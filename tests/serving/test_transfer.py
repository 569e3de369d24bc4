"""KV transfer across two `c2c serve` processes on loopback: one prefills and exports the sharer's cache, the
other imports it and answers C2C from it without running the sharer over those tokens."""

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

from ..conftest import make_fuser, tiny

MESSAGES = [{"role": "user", "content": "A lighthouse keeper counts ships every night and writes their names down. "
                                        "Why would he do that?"}]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(fuser_dir, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cache2cache.cli.main", "serve", "--receiver", "tiny-llama", "--sharer",
           "tiny-qwen2", "--fuser", str(fuser_dir), "--port", str(port)]  # fmt: skip
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
    ports = [_free_port(), _free_port()]
    procs = [_serve(fuser_dir, p) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url, proc in zip(urls, procs):
            _wait(url, proc)
        yield urls, C2CModel(receiver, [sharer], [fuser])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


def test_a_cache_made_in_one_process_answers_in_another(two_servers):
    (sharer_url, receiver_url), local = two_servers
    exported = httpx.post(f"{sharer_url}/v1/caches", json={"model": "tiny-qwen2", "messages": MESSAGES}, timeout=60)
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/octet-stream"
    cache = PromptCache.from_bytes(exported.content)
    assert cache.identity.name == "tiny-qwen2" and int(exported.headers["X-C2C-Tokens"]) == len(cache)
    before = _reused(receiver_url)
    imported = httpx.post(f"{receiver_url}/v1/caches/import", content=exported.content,
                          headers={"content-type": "application/octet-stream"}, timeout=60)  # fmt: skip
    assert imported.status_code == 200 and imported.json() == {"model": "tiny-qwen2", "tokens": len(cache),
                                                                "bytes": cache.nbytes}  # fmt: skip
    answer = httpx.post(f"{receiver_url}/v1/chat/completions", timeout=60,
                        json={"model": "c2c", "messages": MESSAGES, "max_tokens": 8, "temperature": 0}).json()
    # the receiver process did not run the sharer over the imported tokens ...
    assert _reused(receiver_url) - before >= len(cache)
    # ... and answers exactly as a local C2C run does
    want = local.generate([MESSAGES], "c2c", GenerateOptions(8)).results[0].text
    assert answer["choices"][0]["message"]["content"] == want


def test_the_16_bit_wire_halves_the_bytes_and_bad_imports_are_refused(two_servers):
    (sharer_url, receiver_url), _ = two_servers
    body = {"model": "tiny-qwen2", "messages": MESSAGES}
    full = httpx.post(f"{sharer_url}/v1/caches", json=body, timeout=60).content
    half = httpx.post(f"{sharer_url}/v1/caches", json={**body, "dtype": "bfloat16"}, timeout=60).content
    assert PromptCache.from_bytes(half).nbytes * 2 == PromptCache.from_bytes(full).nbytes
    assert len(half) < 0.6 * len(full)
    junk = httpx.post(f"{receiver_url}/v1/caches/import", content=b"\x00" * 64, timeout=30)
    assert junk.status_code == 400 and "not a cache2cache cache file" in junk.json()["error"]["message"]
    other = PromptCache.prefill(tiny("tiny-gemma3"), "hello").to_bytes()
    refused = httpx.post(f"{receiver_url}/v1/caches/import", content=other, timeout=30)
    assert refused.status_code == 400 and "does not serve" in refused.json()["error"]["message"]
    unknown = httpx.post(f"{sharer_url}/v1/caches", json={**body, "model": "nope"}, timeout=30)
    assert unknown.status_code == 404
