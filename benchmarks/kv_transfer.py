"""What moving a sharer's cache between processes costs: wire bytes per token, export / transfer / import time,
and their share of a C2C request's latency, with and without the 16-bit wire format.

    python benchmarks/kv_transfer.py                  # the default pair (shipped fuser)
    python benchmarks/kv_transfer.py --tiny           # tiny pair, seconds

One `c2c serve` app on loopback plays both roles: POST /v1/caches (the sharer service prefills and exports),
POST /v1/caches/import (the receiver service imports), then a c2c chat request that reads the imported cache.
The "transfer" time is the HTTP round trips with the cache's bytes on the wire (serialise, send, parse); the
sharer's prefill inside the export is reported apart, since a split deployment pays it on the sharer host.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import httpx
import torch

from cache2cache import __version__
from cache2cache.atomic import write_json
from cache2cache.inference.factory import DEFAULT_FUSER, DEFAULT_RECEIVER, DEFAULT_SHARER, build
from cache2cache.serving.app import create_app, start_in_thread
from cache2cache.serving.server import ServeConfig

QUESTIONS = ["Why is the sky blue? Explain the physics briefly.", "How does a battery store energy?",
             "What causes the seasons on Earth?", "Why does ice float on water?"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model = (
        build("tiny-llama", ["tiny-qwen2"]) if args.tiny else build(DEFAULT_RECEIVER, [DEFAULT_SHARER], [DEFAULT_FUSER])
    )
    sharer = model.sharers[0].name
    app = create_app(model, ServeConfig(max_tokens=64))
    running = start_in_thread(app)
    url = running.url
    store = app.state.server.store
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=600) as http:
            for i in range(args.repeats):
                for dtype in (None, "bfloat16"):
                    store.clear()
                    messages = [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i}, {dtype})"}]
                    chat = {"model": "c2c", "messages": messages, "max_tokens": args.max_tokens, "temperature": 0}
                    t0 = time.perf_counter()
                    cold = http.post("/v1/chat/completions", json=chat)  # C2C with the sharer run locally
                    c2c_s = time.perf_counter() - t0
                    store.clear()
                    t0 = time.perf_counter()
                    exported = http.post("/v1/caches", json={"model": sharer, "messages": messages, "dtype": dtype})
                    export_s = time.perf_counter() - t0
                    store.clear()  # the receiver side must not find the export's own entry
                    t0 = time.perf_counter()
                    imported = http.post("/v1/caches/import", content=exported.content)
                    import_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    warm = http.post("/v1/chat/completions", json=chat)
                    answer_s = time.perf_counter() - t0
                    assert cold.status_code == exported.status_code == imported.status_code == warm.status_code == 200
                    tokens = int(exported.headers["X-C2C-Tokens"])
                    # the export's sharer prefill, measured apart: the same prefill timed in-process
                    store.clear()
                    ids = _ids(model, messages)
                    t0 = time.perf_counter()
                    store.prefill(model.sharers[0], ids)
                    prefill_s = time.perf_counter() - t0
                    transfer_s = max(0.0, export_s - prefill_s) + import_s
                    rows.append({"dtype": dtype or "float32", "tokens": tokens, "wire_bytes": len(exported.content),
                                 "bytes_per_token": len(exported.content) / tokens, "sharer_prefill_s": prefill_s,
                                 "transfer_s": transfer_s, "c2c_s": c2c_s, "answer_after_import_s": answer_s,
                                 "transfer_share_of_c2c": transfer_s / c2c_s,
                                 "same_answer": cold.json()["choices"][0]["message"]["content"]
                                 == warm.json()["choices"][0]["message"]["content"]})  # fmt: skip
    finally:
        running.stop()
    summary = {}
    for dtype in ("float32", "bfloat16"):
        rs = [r for r in rows if r["dtype"] == dtype]
        summary[dtype] = {k: statistics.median(r[k] for r in rs) for k in
                          ("tokens", "bytes_per_token", "sharer_prefill_s", "transfer_s", "c2c_s",
                           "answer_after_import_s", "transfer_share_of_c2c")}  # fmt: skip
        summary[dtype]["same_answer"] = sum(r["same_answer"] for r in rs) / len(rs)
    result = {
        "date": date.today().isoformat(),
        "c2c_version": __version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "receiver": model.receiver.name,
        "sharer": sharer,
        "sharer_dtype": str(model.sharers[0].model.dtype),
        "summary": summary,
        "rows": rows,
    }
    print(f"{model.receiver.name} <- {sharer} (sharer {result['sharer_dtype']}), medians over {args.repeats}")
    print(f"{'wire':9} {'tokens':>6} {'B/token':>9} {'transfer s':>10} {'C2C s':>7} {'share':>6} {'same answer':>11}")
    for dtype, s in summary.items():
        print(f"{dtype:9} {s['tokens']:6.0f} {s['bytes_per_token']:9.0f} {s['transfer_s']:10.4f} {s['c2c_s']:7.3f} "
              f"{s['transfer_share_of_c2c']:6.1%} {s['same_answer']:11.0%}")  # fmt: skip
    out = args.out or Path(f"docs/results/kv_transfer_{'tiny' if args.tiny else 'default'}.json")
    write_json(out, result)
    print(f"wrote {out}")


def _ids(model, messages) -> list[int]:
    from cache2cache.alignment.tokens import encode, render

    tok = model.sharers[0].tokenizer
    return encode(tok, render(tok, messages, model.chat))[0]


if __name__ == "__main__":
    main()
