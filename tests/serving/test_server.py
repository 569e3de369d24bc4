"""The OpenAI-compatible server on the tiny pair, driven by the official `openai` client over loopback HTTP."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from cache2cache import GenerateOptions
from cache2cache.inference.answerers import answerer
from cache2cache.serving.app import create_app
from cache2cache.serving.server import ServeConfig

from .conftest import LiveServer, tiny_model

MSG = [{"role": "user", "content": "What is a cache?"}]


def _client(live, key: str = "none") -> OpenAI:
    return OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0)


def _direct(live, model: str, prompt, n: int) -> str:
    """What the library answers for the same model, greedily: the server must say the same."""
    ans = live.state.route(model, None)
    return (
        answerer(ans.model, ans.mode, live.state.config.note_tokens)
        .generate([prompt], GenerateOptions(n))
        .results[0]
        .text
    )


def test_models_route_and_answer_like_the_library(live):
    client = _client(live)
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny-llama", "receiver", "tiny-qwen2", "c2c", "t2t", "c2c/tiny-qwen2", "t2t/tiny-qwen2"]
    for model in ("receiver", "tiny-qwen2", "c2c", "t2t"):
        out = client.chat.completions.create(model=model, messages=MSG, max_tokens=8, temperature=0)
        assert out.choices[0].message.content == _direct(live, model, MSG, 8)
        assert out.usage.completion_tokens <= 8 and out.usage.prompt_tokens > 5
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    done = client.completions.create(model="c2c", prompt="Name a colour.", max_tokens=6, temperature=0)
    assert done.choices[0].text == _direct(live, "c2c", "Name a colour.", 6) and done.usage.completion_tokens <= 6


def test_streaming_gives_the_same_text_and_usage(live):
    client = _client(live)
    want = client.chat.completions.create(model="c2c", messages=MSG, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="c2c", messages=MSG, max_tokens=12, temperature=0,
                                                 stream=True))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and chunks[-1].usage.completion_tokens == \
        want.usage.completion_tokens  # fmt: skip
    pieces = list(client.completions.create(model="receiver", prompt="Hi", max_tokens=5, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == _direct(live, "receiver", "Hi", 5)


def test_stop_strings_seed_and_sampling(live):
    client = _client(live)
    full = client.chat.completions.create(model="receiver", messages=MSG, max_tokens=20, temperature=0)
    text = full.choices[0].message.content
    if len(text) > 4:
        stop = text[2:4]
        cut = client.chat.completions.create(model="receiver", messages=MSG, max_tokens=20, temperature=0, stop=[stop])
        assert cut.choices[0].message.content == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"
    a, b = (client.chat.completions.create(model="c2c", messages=MSG, max_tokens=10, temperature=1.0, top_p=0.9,
                                            seed=7).choices[0].message.content for _ in range(2))  # fmt: skip
    assert a == b  # same seed, same sample


def test_concurrent_requests_are_batched_and_answer_like_serial_ones(live):
    client = _client(live)
    prompts = [f"Tell me about the number {i}." for i in range(8)]
    serial = [_direct(live, "c2c", [{"role": "user", "content": p}], 6) for p in prompts]
    before = (live.state.engine.batches, live.state.engine.batched_rows)

    def ask(p):
        return client.chat.completions.create(model="c2c", messages=[{"role": "user", "content": p}], max_tokens=6,
                                              temperature=0).choices[0].message.content  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, prompts))
    batches = live.state.engine.batches - before[0]
    assert live.state.engine.batched_rows - before[1] == 8 and batches < 8  # some shared a generate() call
    assert answers == serial


def test_a_follow_up_turn_reuses_the_conversation_from_the_prefix_store(live, http):
    long = [{"role": "user", "content": "Here is a story about a lighthouse keeper who counts ships. " * 5}]
    client = _client(live)
    first = client.chat.completions.create(model="c2c", messages=long, max_tokens=5, temperature=0)
    hits = live.state.store.stats.hits
    turn2 = long + [{"role": "assistant", "content": first.choices[0].message.content},
                    {"role": "user", "content": "And then?"}]  # fmt: skip
    client.chat.completions.create(model="c2c", messages=turn2, max_tokens=5, temperature=0)
    assert live.state.store.stats.hits >= hits + 2  # the sharer's and the receiver's history were reused
    metrics = http.get("/metrics").text
    assert "c2c_prefix_store_hits" in metrics and "c2c_time_to_first_token_seconds_count" in metrics
    assert "c2c_queue_depth" in metrics and 'c2c_requests_total{route="chat",status="200"}' in metrics


def test_a_disconnected_stream_is_cancelled(live):
    before = live.state.engine.cancelled_rows
    body = {"model": "receiver", "messages": MSG, "max_tokens": 64, "temperature": 0.9, "stream": True,
            "stop": ["\u2603never"]}  # fmt: skip
    with httpx.Client(base_url=live.url, timeout=30) as h:
        with h.stream("POST", "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # the client leaves after the first chunk
    for _ in range(100):
        if live.state.engine.cancelled_rows > before:
            break
        import time

        time.sleep(0.05)
    assert live.state.engine.cancelled_rows == before + 1
    assert httpx.get(f"{live.url}/health").json()["status"] == "ok"


def test_api_key_and_binding():
    server = LiveServer(create_app(tiny_model(), ServeConfig(api_key="sesame")))
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with pytest.raises(Exception) as e:
            _client(server, "wrong").models.list()
        assert getattr(e.value, "status_code", None) == 401
        assert [m.id for m in _client(server, "sesame").models.list().data][0] == "tiny-llama"
        assert httpx.get(f"{server.url}/health").status_code == 200  # health needs no key
    finally:
        server.stop()


BAD = [
    ("not json", b"{oops", None),
    ("empty body", b"", None),
    ("array body", b"[]", None),
    ("no model", {"messages": MSG}, None),
    ("no messages", {"model": "c2c"}, None),
    ("empty messages", {"model": "c2c", "messages": []}, None),
    ("blank user message", {"model": "c2c", "messages": [{"role": "user", "content": "   "}]}, None),
    ("only system", {"model": "c2c", "messages": [{"role": "system", "content": "hi"}]}, None),
    ("bad role", {"model": "c2c", "messages": [{"role": "wizard", "content": "hi"}]}, None),
    ("content not text", {"model": "c2c", "messages": [{"role": "user", "content": 5}]}, None),
    ("message not object", {"model": "c2c", "messages": ["hi"]}, None),
    ("unknown model", {"model": "gpt-9", "messages": MSG}, 404),
    ("empty model", {"model": "", "messages": MSG}, None),
    ("model not string", {"model": 3, "messages": MSG}, None),
    ("negative max_tokens", {"model": "c2c", "messages": MSG, "max_tokens": -1}, None),
    ("zero max_tokens", {"model": "c2c", "messages": MSG, "max_tokens": 0}, None),
    ("huge max_tokens", {"model": "c2c", "messages": MSG, "max_tokens": 10**9}, None),
    ("max_tokens text", {"model": "c2c", "messages": MSG, "max_tokens": "lots"}, None),
    ("negative temperature", {"model": "c2c", "messages": MSG, "temperature": -0.5}, None),
    ("temperature too high", {"model": "c2c", "messages": MSG, "temperature": 9}, None),
    ("temperature text", {"model": "c2c", "messages": MSG, "temperature": "hot"}, None),
    ("top_p zero", {"model": "c2c", "messages": MSG, "top_p": 0}, None),
    ("top_p over one", {"model": "c2c", "messages": MSG, "top_p": 1.5}, None),
    ("n two", {"model": "c2c", "messages": MSG, "n": 2}, None),
    ("n zero", {"model": "c2c", "messages": MSG, "n": 0}, None),
    ("seed text", {"model": "c2c", "messages": MSG, "seed": "x"}, None),
    ("stop empty string", {"model": "c2c", "messages": MSG, "stop": [""]}, None),
    ("too many stops", {"model": "c2c", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, None),
    ("stop number", {"model": "c2c", "messages": MSG, "stop": 5}, None),
    ("unknown sharer", {"model": "c2c", "messages": MSG, "sharers": ["nobody"]}, None),
    ("repeated sharer", {"model": "c2c", "messages": MSG, "sharers": ["tiny-qwen2", "tiny-qwen2"]}, None),
    ("sharers not list", {"model": "c2c", "messages": MSG, "sharers": "tiny-qwen2"}, None),
    ("over-long prompt", {"model": "c2c", "messages": [{"role": "user", "content": "word " * 1500}]}, None),
    ("stream not bool", {"model": "c2c", "messages": MSG, "stream": "yes please"}, None),
    ("completion empty prompt", {"model": "c2c", "prompt": ""}, "completions"),
    ("completion blank prompt", {"model": "c2c", "prompt": "  "}, "completions"),
    ("completion prompt list", {"model": "c2c", "prompt": [1, 2]}, "completions"),
    ("completion unknown model", {"model": "nope", "prompt": "hi"}, "completions-404"),
    ("unknown route", {"model": "c2c", "messages": MSG}, "nowhere"),
]


@pytest.mark.parametrize("name,body,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_4xx_with_an_openai_error_body(http, name, body, expect):
    route = {"completions": "/v1/completions", "completions-404": "/v1/completions",
             "nowhere": "/v1/nowhere"}.get(expect, "/v1/chat/completions")  # fmt: skip
    if isinstance(body, bytes):
        r = http.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(route, json=body)
    assert r.status_code == (404 if expect in (404, "nowhere", "completions-404") else 400), (r.status_code, r.text)
    err = r.json()["error"]
    assert err["message"] and "\n" not in err["message"] and err["type"]


def test_oversized_body_and_the_server_stays_healthy(http):
    r = http.post("/v1/chat/completions", content=json.dumps({"model": "c2c", "messages": MSG, "pad": "x" * 30_000}),
                  headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]
    assert http.get("/health").json()["status"] == "ok"
    ok = http.post("/v1/chat/completions", json={"model": "c2c", "messages": MSG, "max_tokens": 3, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"
    assert "c2c_errors_total" in http.get("/metrics").text


def test_playground_page_is_served(http):
    page = http.get("/")
    assert page.status_code == 200 and "cache-to-cache" in page.text and "/v1/chat/completions" in page.text


def test_concurrent_requests_for_different_models_all_finish(live):
    """Requests that cannot share a generate() call (other model or sampling) wait their turn, none is lost."""
    client = _client(live)
    jobs = [("receiver", 0.0), ("t2t", 0.0), ("c2c", 0.0), ("tiny-qwen2", 0.0), ("c2c", 0.7), ("receiver", 0.0)]

    def ask(job):
        model, temp = job
        return client.chat.completions.create(model=model, messages=MSG, max_tokens=4, temperature=temp, seed=1)

    with ThreadPoolExecutor(len(jobs)) as pool:
        outs = list(pool.map(ask, jobs, timeout=120))
    assert [o.model for o in outs] == [m for m, _ in jobs]
    assert (
        outs[0].choices[0].message.content == outs[-1].choices[0].message.content == _direct(live, "receiver", MSG, 4)
    )


def test_a_failure_mid_stream_ends_the_stream_with_an_error_event(live, http, monkeypatch):
    """Generation that fails after some tokens were sent: the client gets the text so far, then an OpenAI-style
    error event and [DONE] (the 200 is already on the wire); the error is counted and the server goes on."""
    from cache2cache.serving import engine

    real, seen = engine._Rows._advance, []

    def fails_at_the_fourth_token(self, b, token):
        seen.append(token)
        if len(seen) == 4:
            raise RuntimeError("the accelerator fell over")
        real(self, b, token)

    errors_before = _metric(http, 'c2c_errors_total{status="500"}')
    monkeypatch.setattr(engine._Rows, "_advance", fails_at_the_fourth_token)
    body = {"model": "receiver", "messages": MSG, "max_tokens": 12, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200 and events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-2]]
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and "the accelerator fell over" in error["message"]
    assert "".join(deltas) and _direct(live, "receiver", MSG, 12).startswith("".join(deltas))  # the text so far
    assert _metric(http, 'c2c_errors_total{status="500"}') == errors_before + 1
    monkeypatch.undo()
    out = _client(live).chat.completions.create(model="receiver", messages=MSG, max_tokens=4, temperature=0)
    assert out.choices[0].message.content == _direct(live, "receiver", MSG, 4)


def _metric(http, name: str) -> float:
    line = next((x for x in http.get("/metrics").text.splitlines() if x.startswith(name)), None)
    return float(line.split()[-1]) if line else 0.0
