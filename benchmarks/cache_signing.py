"""What signing and verifying a cache costs, as a share of a cache transfer on the default pair.

A transfer here is what `POST /v1/caches` + `POST /v1/caches/import` do around the wire: the sharer prefills the
conversation, the cache is serialised (16-bit, as `--sharer-url` asks), parsed and checked on arrival. Signing adds
a SHA-256 of the payload and an HMAC of the manifest on one side, the same plus validation (shapes, finite values,
the measured scale, tokens vs conversation) on the other. Median of --repeat runs per prompt length.

    .venv/bin/python benchmarks/cache_signing.py --out docs/results/cache_signing.json

Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from cache2cache.atomic import write_json
from cache2cache.caches.identity import identity_of
from cache2cache.caches.prompt_cache import PromptCache, measure_scale
from cache2cache.caches.signing import CacheKeys, validate
from cache2cache.models.loading import load_model

KEYS = CacheKeys({"k1": b"benchmark-secret-0123456789"}, "k1")
TEXT = "The lighthouse keeper counted the ships that passed every night and wrote their names in a blue book. "


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="Qwen2.5-Coder-1.5B-Instruct", help="the model whose caches travel")
    p.add_argument("--tokens", default="128,512", help="prompt lengths (comma list)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("docs/results/cache_signing.json"))
    args = p.parse_args()
    model = load_model(args.model, prefill_only=True)
    scale = measure_scale(model)
    ident = identity_of(model)
    rows = []
    for n in (int(x) for x in args.tokens.split(",")):
        ids = model.tokenizer(TEXT * (n // 15 + 2))["input_ids"][:n]
        text = model.tokenizer.decode(ids)
        prefill_s = median_s(lambda: PromptCache.prefill(model, text, chat=False), max(1, args.repeat // 2))
        cache = PromptCache.prefill(model, text, chat=False)
        plain = cache.to_bytes(torch.bfloat16)
        signed = cache.to_bytes(torch.bfloat16, KEYS)
        ser = median_s(lambda: cache.to_bytes(torch.bfloat16), args.repeat)
        ser_signed = median_s(lambda: cache.to_bytes(torch.bfloat16, KEYS), args.repeat)
        parse = median_s(lambda: PromptCache.from_bytes(plain), args.repeat)

        def verify() -> None:
            c = PromptCache.from_bytes(signed, key=KEYS)
            validate(c, ident, scale, model.tokenizer)

        parse_signed = median_s(verify, args.repeat)
        extra = (ser_signed - ser) + (parse_signed - parse)
        transfer = prefill_s + ser + parse
        rows.append({"tokens": len(cache), "bytes": len(plain), "prefill_s": prefill_s, "serialise_s": ser,
                     "serialise_signed_s": ser_signed, "parse_s": parse, "parse_verify_validate_s": parse_signed,
                     "signing_extra_s": extra, "share_of_transfer": extra / transfer,
                     "share_of_wire_work": extra / (ser + parse)})  # fmt: skip
    print("| tokens | MB | prefill (s) | serialise | +sign | parse | +verify+validate | extra (s) | share of "
          "transfer | share of (de)serialising |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tokens']} | {r['bytes'] / 1e6:.1f} | {r['prefill_s']:.3f} | {r['serialise_s']:.4f} | "
              f"{r['serialise_signed_s']:.4f} | {r['parse_s']:.4f} | {r['parse_verify_validate_s']:.4f} | "
              f"{r['signing_extra_s']:.4f} | {r['share_of_transfer']:.2%} | {r['share_of_wire_work']:.0%} |")
    write_json(args.out, {"model": model.name, "rows": rows, "repeat": args.repeat, "torch": torch.__version__,
                          "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"})  # fmt: skip
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
