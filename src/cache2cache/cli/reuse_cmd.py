"""`c2c reuse`: same-base cache reuse (DroidSpeak): capture A's caches, profile which layers B recomputes,
and generate with B from A's caches."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..atomic import write_json
from ..errors import C2CError
from ..evaluation.scoring import letter_token_ids, prompt_for
from ..evaluation.tasks import get_task
from ..inference.pipeline import GenerateOptions
from ..models.loading import load_model
from ..reuse.capture import Capture, capture
from ..reuse.compat import check_same_base
from ..reuse.partial import RecomputePlan, generate_with_reuse
from ..reuse.profile import plot_profile, profile
from .common import positive_int


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, help="model A, which prefills (catalog name, directory, hub id)")
    p.add_argument("--b", required=True, help="model B, a fine-tune of the same base, which reuses A's cache")
    p.add_argument("--dtype", default="float32", help="dtype of both models (default float32)")
    p.add_argument("--device", default="cpu")


def register(sub) -> None:
    p = sub.add_parser(
        "reuse",
        help="same-base cache reuse: B reuses A's KV and recomputes a few layers",
        description=(
            "DroidSpeak-style reuse between two fine-tunes of one base (same architecture, tokenizer and chat\n"
            "template): A prefills; B takes A's KV cache for most layers and recomputes contiguous layer groups\n"
            "from A's stored hidden states (the E-cache). 'profile' measures per-layer sensitivity on calibration\n"
            "prompts and picks plans under recompute budgets; 'generate' answers with B from A's caches."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rsub = p.add_subparsers(dest="reuse_command", metavar="ACTION")
    rsub.required = True
    prof = rsub.add_parser("profile", help="per-layer sensitivity and plans per recompute budget (JSON + PNG)")
    _models(prof)
    prof.add_argument("--task", default="arc_easy", help="calibration questions (default arc_easy)")
    prof.add_argument("--split", default="validation")
    prof.add_argument("--limit", type=positive_int, default=32, help="calibration questions (default 32)")
    prof.add_argument("--budgets", default="0.1,0.2,0.3,0.5", help="fractions of layers to recompute")
    prof.add_argument("--out", type=Path, default=Path("runs/reuse/profile.json"))
    prof.set_defaults(func=run_profile)
    gen = rsub.add_parser("generate", help="B answers from A's caches with a recompute plan")
    _models(gen)
    gen.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for a batch")
    gen.add_argument("--plan", default=None, help="'none', 'all' or groups like '0-2,10-12' (inclusive)")
    gen.add_argument("--profile", type=Path, help="take the plan of --budget from a profile JSON")
    gen.add_argument("--budget", type=float, default=0.3, help="which profiled budget to use (default 0.3)")
    gen.add_argument("--save-capture", type=Path, help="also write A's caches to this .safetensors file")
    gen.add_argument("--capture", type=Path, help="reuse a saved capture instead of prefilling A")
    gen.add_argument("--max-new-tokens", type=positive_int, default=32)
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(func=run_generate)


def _load_pair(args):
    a = load_model(args.a, dtype=args.dtype, device=args.device)
    b = load_model(args.b, dtype=args.dtype, device=args.device)
    check_same_base(a, b)
    return a, b


def run_profile(args) -> int:
    try:
        budgets = [float(x) for x in args.budgets.split(",") if x.strip()]
    except ValueError:
        raise C2CError(f"--budgets: expected comma-separated fractions, got {args.budgets!r}") from None
    if not budgets or not all(0 <= x <= 1 for x in budgets):
        raise C2CError("--budgets: fractions between 0 and 1")
    items = get_task(args.task).load(args.split)
    items = [it for it in random.Random(0).sample(items, min(args.limit, len(items))) if it.choices]
    if not items:
        raise C2CError(f"task {args.task} has no multiple-choice items for calibration")
    a, b = _load_pair(args)
    with Console(stderr=True).status(f"profiling {len(items)} prompts..."):
        cap = capture(a, [prompt_for(it, "letter") for it in items])
        result = profile(b, cap, budgets, gold=[int(it.answer) for it in items],
                         choices=[[ids[0] for ids in letter_token_ids(b.tokenizer, len(it.choices))] for it in items])  # fmt: skip
    result["bytes_per_token"] = cap.bytes_per_token()
    result["calibration"] = {"task": args.task, "split": args.split, "limit": len(items)}
    write_json(args.out, result)
    plot_profile(result, args.out.with_suffix(".png"))
    table = Table(title=f"{b.name} reusing {a.name}: {len(items)} calibration prompts -> {args.out}",
                  title_justify="left")  # fmt: skip
    for c in ("budget", "plan", "KL", "top-1 agree", "accuracy", "speed-up"):
        table.add_column(c)
    for p in result["plans"]:
        acc = "" if p["accuracy"] is None else f"{p['accuracy']:.3f}"
        table.add_row(f"{p['budget']:.2f}", p["plan"], f"{p['kl']:.4f}", f"{p['top1_agreement']:.3f}", acc,
                      f"{p['speedup_vs_full_prefill']:.2f}x")  # fmt: skip
    Console().print(table)
    return 0


def _plan_from(args, num_layers: int) -> RecomputePlan:
    if args.profile:
        try:
            plans = json.loads(args.profile.read_text())["plans"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise C2CError(f"cannot read profile {args.profile}: {e}") from None
        match = [p for p in plans if abs(p["budget"] - args.budget) < 1e-9]
        if not match:
            raise C2CError(f"profile has no budget {args.budget}; it has {[p['budget'] for p in plans]}")
        return RecomputePlan.parse(match[0]["plan"], num_layers)
    return RecomputePlan.parse(args.plan or "none", num_layers)


def run_generate(args) -> int:
    if not args.prompt and not args.capture:
        raise C2CError("give --prompt (A prefills it) or --capture (a saved prefill)")
    a, b = _load_pair(args)
    cap = Capture.load(args.capture) if args.capture else capture(a, args.prompt)
    if args.save_capture:
        cap.save(args.save_capture)
    plan = _plan_from(args, len(cap.keys))
    out = generate_with_reuse(b, cap, plan, GenerateOptions(max_new_tokens=args.max_new_tokens))
    out["bytes_per_token"] = cap.bytes_per_token()
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for text in out["texts"]:
            print(text)
        print(f"[plan {out['plan']}: B's cache built in {out['prefill_s']:.3f} s, decode {out['decode_s']:.3f} s]")
    return 0
