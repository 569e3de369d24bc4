"""Fuser sizes for real pairs and the fused-generation timing breakdown (sharer prefill, fuse, receiver prefill,
decode) on a real pair. Prints tables and writes JSON.

    .venv/bin/python benchmarks/generate_breakdown.py --out docs/results/generate_breakdown.json
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from transformers import AutoConfig

from cache2cache import C2CModel, GenerateOptions, ModelGeometry, __version__
from cache2cache.atomic import write_json
from cache2cache.fuser.config import PRESETS
from cache2cache.fuser.model import Fuser
from cache2cache.inference.factory import build
from cache2cache.models.catalog import REAL_MODELS
from cache2cache.models.pull import is_pulled, model_dir

PROMPT = ("Read the question and answer it.\nQuestion: A student heats a beaker of water from 20 C to 80 C. "
          "Which property of the water changes the most: its mass, its volume, its temperature, or its colour? "
          "Explain briefly.")  # fmt: skip


def fuser_sizes(pairs: list[tuple[str, str]]) -> list[dict]:
    rows = []
    for r, s in pairs:
        rm, sm = REAL_MODELS[r], REAL_MODELS[s]
        if not (is_pulled(rm) and is_pulled(sm)):
            continue
        rg = ModelGeometry.from_config(AutoConfig.from_pretrained(model_dir(rm)))
        sg = ModelGeometry.from_config(AutoConfig.from_pretrained(model_dir(sm)))
        n_recv = _num_params(rm)
        for preset in PRESETS:
            with torch.device("meta"):  # count parameters without allocating a paper-size fuser
                n = Fuser.for_pair(r, rg, s, sg, preset=preset).num_parameters()
            rows.append({"receiver": r, "sharer": s, "preset": preset, "fuser_params": n,
                         "receiver_params": n_recv, "ratio": n / n_recv})  # fmt: skip
    return rows


def _num_params(model) -> int:
    """Parameters in a pulled model's safetensors, read from the header (no weights loaded)."""
    from safetensors import safe_open

    with safe_open(model_dir(model) / "model.safetensors", "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def breakdown(receiver: str, sharer: str, repeats: int, max_new_tokens: int) -> dict:
    model: C2CModel = build(receiver, [sharer])
    options = GenerateOptions(max_new_tokens=max_new_tokens)
    model.generate([PROMPT], "c2c", options)  # warm-up
    runs = [model.generate([PROMPT], "c2c", options) for _ in range(repeats)]
    parts = ["sharer_prefill_s", "fuse_s", "receiver_prefill_s", "decode_s", "total_s"]
    med = {p: statistics.median(r.timings.to_dict()[p] for r in runs) for p in parts}
    res = runs[0].results[0]
    return {"receiver": receiver, "sharer": sharer, "repeats": repeats, "median": med,
            "receiver_prompt_tokens": res.prompt_tokens, "sharer_prompt_tokens": res.sharer_prompt_tokens[0],
            "new_tokens": res.new_tokens, "fuser": "untrained compact (all gates open)",
            "fuse_over_receiver_prefill": med["fuse_s"] / med["receiver_prefill_s"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/results/generate_breakdown.json"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    pairs = [("SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct"), ("SmolLM2-135M-Instruct", "Gemma-3-270M"),
             ("Qwen2.5-Coder-0.5B-Instruct", "SmolLM2-135M-Instruct"),
             ("SmolLM2-135M-Instruct", "Qwen2.5-Coder-1.5B-Instruct")]  # fmt: skip
    sizes = fuser_sizes(pairs)
    print(f"{'receiver':28} {'sharer':28} {'preset':8} {'params':>12} {'% of receiver':>14}")
    for r in sizes:
        print(
            f"{r['receiver']:28} {r['sharer']:28} {r['preset']:8} {r['fuser_params']:>12,} {100 * r['ratio']:>13.1f}%"
        )
    t = breakdown(pairs[0][0], pairs[0][1], args.repeats, args.max_new_tokens)
    print(f"\nc2c generate, {t['receiver']} <- {t['sharer']}, median of {t['repeats']} (s):")
    for k, v in t["median"].items():
        print(f"  {k:20} {v:.4f}")
    print(f"  fuse / receiver prefill = {t['fuse_over_receiver_prefill']:.3f}")
    result = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
              f"{'cuda' if torch.cuda.is_available() else 'cpu'}", "c2c_version": __version__,
              "torch": torch.__version__, "fuser_sizes": sizes, "breakdown": t}  # fmt: skip
    write_json(args.out, result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
