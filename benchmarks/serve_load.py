"""Load on `c2c serve`: many concurrent OpenAI-style clients against one server, then the same requests one at a
time. Prints a table and writes JSON: requests, errors, p50/p99 latency, throughput (requests/s and completion
tokens/s) concurrent vs serial, batches the engine ran, peak memory of the process.

    python benchmarks/serve_load.py --tiny                       # tiny pair, seconds (CI-sized)
    python benchmarks/serve_load.py --requests 500 --clients 32  # the default pair and its shipped fuser

The server runs in this process on loopback (uvicorn in a thread); the clients are threads with their own HTTP
connections.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import httpx
import torch

from cache2cache import __version__
from cache2cache.atomic import write_json
from cache2cache.inference.factory import DEFAULT_FUSER, DEFAULT_RECEIVER, DEFAULT_SHARER, build
from cache2cache.serving.app import create_app, start_in_thread
from cache2cache.serving.server import ServeConfig

TOPICS = ["the sky", "rain", "a volcano", "the moon", "bread", "a battery", "a rainbow", "the heart", "sound",
          "a magnet", "ice", "a seed", "wind", "salt", "a bridge", "glass"]  # fmt: skip


def one(client: httpx.Client, model: str, i: int, max_tokens: int) -> dict:
    body = {"model": model, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"In one sentence, what is {TOPICS[i % len(TOPICS)]}? ({i})"}]}
    t0 = time.perf_counter()
    try:
        r = client.post("/v1/chat/completions", json=body)
        ok = r.status_code == 200
        tokens = r.json()["usage"]["completion_tokens"] if ok else 0
    except httpx.HTTPError:
        ok, tokens = False, 0
    return {"ok": ok, "seconds": time.perf_counter() - t0, "tokens": tokens}


def run_load(url: str, model: str, n: int, clients: int, max_tokens: int) -> dict:
    local = threading.local()

    def call(i: int) -> dict:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=600)
        return one(local.client, model, i, max_tokens)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        rows = list(pool.map(call, range(n)))
    wall = time.perf_counter() - t0
    lat = sorted(r["seconds"] for r in rows)
    return {"requests": n, "clients": clients, "errors": sum(not r["ok"] for r in rows), "wall_s": wall,
            "p50_s": statistics.median(lat), "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "requests_per_s": n / wall, "tokens_per_s": sum(r["tokens"] for r in rows) / wall,
            "completion_tokens": sum(r["tokens"] for r in rows)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny-llama <- tiny-qwen2 with an untrained fuser")
    ap.add_argument("--model", default="c2c", help="served model id to load (c2c, receiver, t2t, ...)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--serial", type=int, default=0, help="requests sent one at a time (default: clients)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.tiny:
        model = build("tiny-llama", ["tiny-qwen2"])
    else:
        model = build(DEFAULT_RECEIVER, [DEFAULT_SHARER], [DEFAULT_FUSER])
    app = create_app(model, ServeConfig(max_batch=args.max_batch, max_wait_ms=20, max_tokens=max(64, args.max_tokens)))
    running = start_in_thread(app)
    url = running.url
    state = app.state.server
    try:
        serial = run_load(url, args.model, args.serial or args.clients, 1, args.max_tokens)
        batches0 = (state.engine.batches, state.engine.batched_rows)
        load = run_load(url, args.model, args.requests, args.clients, args.max_tokens)
        load["engine_batches"] = state.engine.batches - batches0[0]
        load["mean_batch"] = (state.engine.batched_rows - batches0[1]) / max(1, load["engine_batches"])
        healthy = httpx.get(f"{url}/health").json()["status"] == "ok"
    finally:
        running.stop()
    result = {
        "date": date.today().isoformat(), "c2c_version": __version__, "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "receiver": model.receiver.name,
        "sharers": [s.name for s in model.sharers], "model": args.model, "max_tokens": args.max_tokens,
        "serial": serial, "concurrent": load, "throughput_ratio": load["tokens_per_s"] / serial["tokens_per_s"],
        "request_ratio": load["requests_per_s"] / serial["requests_per_s"], "healthy_after": healthy,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip
    print(f"{model.receiver.name} <- {', '.join(result['sharers'])}, model {args.model}, max_tokens {args.max_tokens}")
    print(f"{'':12} {'requests':>8} {'errors':>6} {'p50 s':>8} {'p99 s':>8} {'req/s':>7} {'tok/s':>7}")
    for name, r in (("serial", serial), (f"{args.clients} clients", load)):
        print(f"{name:12} {r['requests']:8d} {r['errors']:6d} {r['p50_s']:8.3f} {r['p99_s']:8.3f} "
              f"{r['requests_per_s']:7.2f} {r['tokens_per_s']:7.1f}")  # fmt: skip
    print(f"concurrent/serial: {result['request_ratio']:.2f}x requests/s, {result['throughput_ratio']:.2f}x tokens/s; "
          f"mean batch {load['mean_batch']:.1f}; peak RSS {result['peak_rss_mb']:.0f} MB; healthy after: {healthy}")
    out = args.out or Path(f"docs/results/serve_load_{'tiny' if args.tiny else 'default'}.json")
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
