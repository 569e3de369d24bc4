"""`c2c serve`: the OpenAI-compatible server (serving/app.py) on uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

from ..caches.signing import CacheKeys
from ..errors import C2CError
from .common import add_model_args, build_from_args, input_file, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve receiver, sharers, T2T and C2C over an OpenAI-compatible HTTP API",
        description=(
            "Serve the receiver alone, each sharer alone, C2C (the receiver reading the sharers' caches) and\n"
            "T2T over OpenAI's /v1/chat/completions, /v1/completions and /v1/models, streaming or not, with\n"
            "batching of concurrent requests, a shared prefix store, /health, /metrics and a playground at /.\n"
            "Binds 127.0.0.1 unless --host says otherwise. Point any OpenAI client at http://HOST:PORT/v1."
        ),
        epilog=(
            "examples:\n"
            "  c2c serve                                            # the default pair and its shipped fuser\n"
            "  c2c serve --receiver tiny-llama --sharer tiny-qwen2 --port 8001\n"
            "  C2C_API_KEY=secret c2c serve --host 0.0.0.0          # reachable from other hosts, key required\n"
            "  c2c serve --port 8001                                # host A: runs the sharer (and receiver)\n"
            "  c2c serve --sharer-url http://hostA:8001             # host B: receiver + fuser, no sharer weights\n"
            "  (host B, default pair: model 'translated' with a \"brief\" fetches the brief's translated cache\n"
            "   from host A, and the receiver answers without the sharer's weights or reading the brief)\n"
            "  (across hosts, give both --cache-key-file key.json: caches are signed and verified)\n\n"
            "then:\n"
            "  from openai import OpenAI\n"
            "  client = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='secret')\n"
            "  client.chat.completions.create(model='c2c', messages=[{'role': 'user', 'content': 'hi'}])"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $C2C_API_KEY)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="requests per generate() call")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for batch mates")
    p.add_argument("--max-tokens", type=positive_int, default=512, help="the most new tokens a request may ask")
    p.add_argument("--max-request-bytes", type=positive_int, default=1 << 20)
    p.add_argument("--store-mb", type=positive_int, default=2048, help="prefix store budget in MiB")
    p.add_argument("--sharer-url", default=None,
                   help="the sharers run in another `c2c serve` at this URL: load them here without weights and "
                        "fetch their caches from it per c2c request (KV transfer between hosts)")  # fmt: skip
    trust = p.add_argument_group("cache trust (POST /v1/caches, /v1/caches/import, --sharer-url)")
    trust.add_argument("--cache-key-file", type=input_file, default=None,
                       help="shared secret(s) for signing exported caches and verifying imported and fetched ones: "
                            "a file with one secret, or JSON {\"active\": ID, \"keys\": {ID: SECRET}, "
                            "\"ttl_s\": N} (default: $C2C_CACHE_KEY)")  # fmt: skip
    trust.add_argument("--allow-unsigned-caches", action="store_true",
                       help="without a key, accept imported and fetched caches anyway (anyone who can reach the "
                            "server can then write what its models 'have read': trusted networks only)")  # fmt: skip
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from ..serving.app import create_app
    from ..serving.server import ServeConfig

    if not 0 < args.port < 65536:
        raise C2CError(f"--port must be in 1-65535, got {args.port}")
    if not 0 <= args.max_wait_ms <= 10_000:
        raise C2CError(f"--max-wait-ms must be in [0, 10000], got {args.max_wait_ms}")
    keys = CacheKeys.from_file(args.cache_key_file) if args.cache_key_file else CacheKeys.from_env()
    if keys is None and args.sharer_url and not args.allow_unsigned_caches:
        raise C2CError("--sharer-url fetches caches from another process: give --cache-key-file (the same key as the "
                       "sharer service), or --allow-unsigned-caches on a trusted network")  # fmt: skip
    if keys is None and args.allow_unsigned_caches:
        print("warning: --allow-unsigned-caches: any client that reaches this server can import caches (decide what "
              "its models have read); use --cache-key-file across hosts", file=sys.stderr, flush=True)  # fmt: skip
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_tokens=args.max_tokens,
                         default_max_tokens=min(128, args.max_tokens), max_request_bytes=args.max_request_bytes,
                         api_key=args.api_key or os.environ.get("C2C_API_KEY") or None,
                         store_bytes=args.store_mb << 20, sharer_url=args.sharer_url, cache_keys=keys,
                         allow_unsigned_caches=args.allow_unsigned_caches)  # fmt: skip
    if args.sharer_url and not args.sharer_url.startswith(("http://", "https://")):
        raise C2CError(f"--sharer-url must be an http(s) URL, got {args.sharer_url!r}")
    app = create_app(build_from_args(args, skeleton_sharers=bool(args.sharer_url)), config)
    print(f"serving {', '.join(app.state.server.model_ids())} on http://{args.host}:{args.port}/v1 "
          f"(playground: http://{args.host}:{args.port}/)", flush=True)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
