"""Fuse step time against the receiver's prefill time (issue 5's target: fuse / receiver prefill <= 0.15),
across prompt lengths and batch sizes, on the default pair with its shipped fuser. Prints a table, writes JSON.

The fuser's work grows with tokens like the receiver's, but it is made of many small projections (two per fused
layer), so at short prompts per-operation overhead dominates it; this measures where the ratio lands.

    .venv/bin/python benchmarks/fuse_ratio.py --out docs/results/fuse_ratio.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
from datetime import date
from pathlib import Path

import torch

from cache2cache import __version__
from cache2cache.atomic import write_json
from cache2cache.evaluation.tasks import get_task
from cache2cache.inference.factory import DEFAULT_FUSER, DEFAULT_RECEIVER, DEFAULT_SHARER, build


def prompt_of_length(words: list[str], tokenizer, n_tokens: int, offset: int) -> str:
    """Text from a word stream that the receiver's tokenizer encodes to about `n_tokens` tokens."""
    out: list[str] = []
    i = offset
    while len(tokenizer.encode(" ".join(out), add_special_tokens=False)) < n_tokens:
        out.append(words[i % len(words)])
        i += 1
    return " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="64,128,256,512", help="receiver prompt lengths in tokens")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per point (median), after one warm-up")
    ap.add_argument("--out", type=Path, default=Path("docs/results/fuse_ratio.json"))
    args = ap.parse_args()
    model = build(DEFAULT_RECEIVER, [DEFAULT_SHARER], [DEFAULT_FUSER])
    tok = model.receiver.tokenizer
    words = " ".join(f"{it.question} {' '.join(it.choices)}" for it in get_task("arc_easy").load("validation")).split()
    rows = []
    for bs in (int(x) for x in args.batch_sizes.split(",")):
        for n in (int(x) for x in args.lengths.split(",")):
            prompts = [prompt_of_length(words, tok, n, 997 * b) for b in range(bs)]
            batch = model.encode(prompts)
            model.prefill(batch)  # warm-up
            runs = [model.prefill(batch)[1] for _ in range(args.repeats)]
            fuse = statistics.median(t.fuse_s for t in runs)
            recv = statistics.median(t.receiver_prefill_s for t in runs)
            shar = statistics.median(t.sharer_prefill_s for t in runs)
            rows.append({"batch": bs, "receiver_tokens": int(batch.ids.shape[1]), "sharer_prefill_s": shar,
                         "receiver_prefill_s": recv, "fuse_s": fuse, "fuse_over_receiver_prefill": fuse / recv})
            print(f"batch {bs:2d}  {batch.ids.shape[1]:4d} tokens  sharer {shar:7.3f} s  receiver {recv:6.3f} s  "
                  f"fuse {fuse:6.3f} s  ratio {fuse / recv:.3f}", flush=True)  # fmt: skip
    write_json(args.out, {"date": date.today().isoformat(), "cache2cache": __version__, "torch": torch.__version__,
                          "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                          "receiver": model.receiver.name, "sharer": model.sharers[0].name,
                          "receiver_dtype": str(model.receiver.model.dtype),
                          "sharer_dtype": str(model.sharers[0].model.dtype), "fuser": model.fusers[0].source,
                          "repeats": args.repeats, "rows": rows})  # fmt: skip
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
