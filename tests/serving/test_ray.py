"""The Ray Serve application on a local Ray instance bound to 127.0.0.1: sharer and receiver as separate
deployments, the cache passed as an object reference, OpenAI routes through the official client. Marked `ray`
(off by default; about a minute): `bash scripts/test.sh -m ray`."""

from __future__ import annotations

import socket

import pytest

from cache2cache import C2CModel, GenerateOptions
from cache2cache.caches.prompt_cache import PromptCache
from cache2cache.caches.store import PrefixStore

from ..conftest import make_fuser, tiny

pytestmark = pytest.mark.ray
MSG = [{"role": "user", "content": "A lighthouse keeper counts ships. Why?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory):
    ray = pytest.importorskip("ray")
    from ray import serve

    from cache2cache.serving.ray_app import build

    receiver, sharer = tiny("tiny-llama"), tiny("tiny-qwen2")
    fuser = make_fuser(receiver, sharer)
    fuser_dir = fuser.save_pretrained(tmp_path_factory.mktemp("fuser") / "f")
    port = _free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}, log_to_driver=False)  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text("a-shared-cache-key-for-the-test")
    serve.run(build({"receiver": "tiny-llama", "sharer": "tiny-qwen2", "fuser": str(fuser_dir),
                     "cache_key_file": str(key_file),
                     "sharer_cpus": 1, "receiver_cpus": 1}), name="c2c", route_prefix="/")  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", C2CModel(receiver, [sharer], [fuser])
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_serve_answers_c2c_through_the_openai_client(ray_app):
    import torch
    from openai import OpenAI

    url, local = ray_app
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny-llama", "receiver", "tiny-qwen2", "c2c",
                                                          "c2c/tiny-qwen2"]  # fmt: skip
    out = client.chat.completions.create(model="c2c", messages=MSG, max_tokens=8, temperature=0)
    # the sharer deployment sends its cache in bfloat16: the same answer as a local run from the rounded cache
    sharer = local.sharers[0]
    rounded = PromptCache.from_bytes(PromptCache.prefill(sharer, MSG).to_bytes(torch.bfloat16)).to(dtype=torch.float32)
    store = PrefixStore()
    store.put(rounded)
    want = C2CModel(local.receiver, [sharer], local.fusers, store=store).generate([MSG], "c2c", GenerateOptions(8))
    assert out.choices[0].message.content == want.results[0].text
    assert out.usage.completion_tokens == want.results[0].new_tokens
    alone = client.chat.completions.create(model="receiver", messages=MSG, max_tokens=6, temperature=0)
    assert alone.choices[0].message.content == local.generate([MSG], "receiver", GenerateOptions(6)).results[0].text


def test_ray_serve_rejects_bad_requests_with_openai_errors(ray_app):
    import httpx

    url, _ = ray_app
    for body, status in [({"model": "c2c", "messages": []}, 400), ({"model": "nope", "messages": MSG}, 404),
                         ({"model": "c2c", "messages": MSG, "max_tokens": -3}, 400),
                         ({"model": "c2c", "messages": MSG, "stream": True}, 400)]:  # fmt: skip
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == status and r.json()["error"]["message"]
