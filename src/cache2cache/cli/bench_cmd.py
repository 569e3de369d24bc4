"""`c2c bench`: latency (TTFT, end-to-end, phases) per mode and throughput per batch size; JSON, table, PNG."""

from __future__ import annotations

import argparse
import json
import random
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..atomic import check_writable_dir, write_json
from ..errors import C2CError
from ..evaluation.bench import BenchConfig, check_batch_fits, environment, latency, ratios, throughput
from ..evaluation.tasks import get_task
from ..inference.modes import BENCH_MODES
from ..inference.wire import human_bytes
from .common import add_model_args, build_from_args, output_file, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="latency and throughput of receiver / sharer / T2T / C2C",
        description=(
            "Latency per mode on real questions (batch 1): time to first token and end-to-end for a fixed\n"
            "number of new tokens, with the phase breakdown, medians over --repeats after a warm-up; then\n"
            "generated tokens/s of C2C and the receiver at each --batch-sizes; peak memory. Reports the ratios\n"
            "fuse/receiver-prefill, T2T/C2C end-to-end, and C2C/receiver TTFT. Writes JSON and a PNG."
        ),
        epilog="example:\n  c2c bench --fuser fusers/smollm2-qwen15 --repeats 5 --out docs/results/bench.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--task", default="arc_easy", help="where the questions come from (default arc_easy)")
    p.add_argument("--split", default="validation")
    p.add_argument("--modes", default=",".join(BENCH_MODES))
    p.add_argument("--new-tokens", type=positive_int, default=32, help="tokens each answer decodes (fixed)")
    p.add_argument("--t2t-tokens", type=positive_int, default=64, help="tokens the sharer writes in t2t mode")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--batch-sizes", default="1,2,4,8", help="comma list for the throughput sweep")
    p.add_argument("--out", type=output_file, default=Path("runs/bench/bench.json"))
    p.add_argument("--json", action="store_true", help="print the result JSON to stdout")
    p.set_defaults(func=run)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise C2CError(f"{what}: expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise C2CError(f"{what}: need positive whole numbers, got {text!r}")
    return values


def run(args) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in BENCH_MODES]
    if bad or not modes:
        raise C2CError(f"unknown or no mode(s) {bad}: choose from {', '.join(BENCH_MODES)}")
    cfg = BenchConfig(modes=modes, new_tokens=args.new_tokens, t2t_tokens=args.t2t_tokens, repeats=args.repeats,
                      batch_sizes=_int_list(args.batch_sizes, "--batch-sizes"))  # fmt: skip
    check_writable_dir(args.out.parent, "--out")
    if args.out.is_dir():
        raise C2CError(f"--out {args.out} is a folder: give a .json file path")
    items = get_task(args.task).load(args.split)
    items = random.Random(0).sample(items, min(len(items), max(cfg.repeats, max(cfg.batch_sizes))))
    model = build_from_args(args)
    if any(m != "receiver" for m in modes) and not model.sharers:
        raise C2CError("modes sharer, t2t and c2c need a sharer")
    longest = max(len(model.receiver.tokenizer(it.question)["input_ids"]) for it in items) + 64 + cfg.new_tokens
    check_batch_fits(model, max(cfg.batch_sizes), longest)
    console = Console(stderr=True)
    with console.status("measuring latency...") as status:
        lat = latency(model, items, cfg, progress=lambda m: status.update(f"measured {m}; next..."))
        status.update("measuring throughput...")
        tput = throughput(model, items, cfg, modes=[m for m in ("receiver", "c2c") if m in modes])
    result = {"date": date.today().isoformat(), "environment": environment(model), "config": vars(cfg),
              "fusers": [f.source or "untrained" for f in model.fusers], "latency": lat, "throughput_tok_s": tput,
              "ratios": ratios(lat)}  # fmt: skip
    write_json(args.out, result)
    _plot(result, args.out.with_suffix(".png"))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result, args.out)
    return 0


def _print(result: dict, out: Path) -> None:
    table = Table(title=f"latency, batch 1, median of {result['config']['repeats']} (s) -> {out}", title_justify="left")
    cols = ("mode", "TTFT", "end-to-end", "T2T sharer", "sharer prefill", "fuse", "prefill", "decode", "peak MB",
            "sent")
    for c in cols:
        table.add_column(c, justify="left" if c == "mode" else "right")
    for mode, m in result["latency"].items():
        p = m["parts_median_s"]
        table.add_row(mode, f"{m['ttft_s']:.3f}", f"{m['e2e_s']:.3f}", f"{p['t2t_sharer_s']:.3f}",
                      f"{p['sharer_prefill_s']:.3f}", f"{p['fuse_s']:.4f}", f"{p['receiver_prefill_s']:.3f}",
                      f"{p['decode_s']:.3f}", f"{m['peak_memory_mb']:.0f}",
                      human_bytes(m.get("wire_bytes", 0)))  # fmt: skip
    console = Console()
    console.print(table)
    for mode, per_bs in result["throughput_tok_s"].items():
        console.print(f"{mode} tokens/s by batch size: " + ", ".join(f"{b}: {v:.1f}" for b, v in per_bs.items()))
    for k, v in result["ratios"].items():
        console.print(f"{k}: {v:.3f}")


def _plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation.plots import PHASES

    modes = list(result["latency"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    bottom = [0.0] * len(modes)
    for key, label in PHASES:
        vals = [result["latency"][m]["parts_median_s"].get(key, 0.0) for m in modes]
        a.bar(modes, vals, bottom=bottom, label=label)
        bottom = [x + v for x, v in zip(bottom, vals)]
    a.plot(modes, [result["latency"][m]["ttft_s"] for m in modes], "k^", label="TTFT")
    a.set_ylabel("seconds (batch 1, median)")
    a.set_title("end-to-end latency by phase")
    a.legend(fontsize=7)
    for mode, per_bs in result["throughput_tok_s"].items():
        b.plot([int(k) for k in per_bs], list(per_bs.values()), "o-", label=mode)
    b.set_xlabel("batch size")
    b.set_ylabel("generated tokens / s")
    b.set_title("throughput")
    b.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
