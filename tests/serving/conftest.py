"""A real server (uvicorn in a thread, loopback, a free port) over the tiny pair, shared by the serving tests."""

from __future__ import annotations

import httpx
import pytest

from cache2cache import C2CModel
from cache2cache.serving.app import create_app, start_in_thread
from cache2cache.serving.server import ServeConfig

from ..conftest import make_fuser, tiny


class LiveServer:
    def __init__(self, app) -> None:
        self.app = app
        self.running = start_in_thread(app)
        self.url = self.running.url

    @property
    def state(self):
        return self.app.state.server

    def stop(self) -> None:
        self.running.stop()


def tiny_model() -> C2CModel:
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    return C2CModel(r, [s], [make_fuser(r, s)])


@pytest.fixture(scope="module")
def live():
    server = LiveServer(create_app(tiny_model(), ServeConfig(max_tokens=64, max_request_bytes=20_000,
                                                             max_wait_ms=30)))  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, timeout=60) as client:
        yield client
