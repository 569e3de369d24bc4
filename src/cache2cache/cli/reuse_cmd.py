"""`c2c reuse`: same-base cache reuse (DroidSpeak): capture A's caches, profile which layers B recomputes,
and generate with B from A's caches."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from ..atomic import write_json
from ..errors import C2CError
from ..evaluation.scoring import letter_token_ids, prompt_for
from ..evaluation.tasks import get_task
from ..inference.batching import GenerateOptions
from ..models.loading import load_model
from ..reuse.capture import Capture, capture
from ..reuse.compat import check_same_base
from ..reuse.evaluate import evaluate_plans
from ..reuse.finetune import LoraRecipe, finetune_lora
from ..reuse.partial import RecomputePlan, generate_with_reuse
from ..reuse.profile import SEARCHES, plot_profile, plot_tradeoff, profile, profile_evaluations
from .common import input_file, output_dir, output_file, positive_int


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
            "prompts and picks plans under recompute budgets; 'eval' measures those plans on held-out questions\n"
            "(accuracy, agreement with B's own prefill, speed-up); 'generate' answers with B from A's caches;\n"
            "'finetune' makes a same-base partner (a LoRA adapter) when you have only one model."
        ),
        epilog=(
            "examples:\n"
            "  c2c reuse finetune --out adapters/my-arc-lora          # SmolLM2 + LoRA on ARC-Easy (test split)\n"
            "  c2c reuse profile --a SmolLM2-135M-Instruct --b SmolLM2-135M-ARC-LoRA --out runs/reuse/p.json\n"
            "  c2c reuse generate --a SmolLM2-135M-Instruct --b SmolLM2-135M-ARC-LoRA \\\n"
            "      --profile runs/reuse/p.json --budget 0.3 --prompt 'What is a prime number?'\n"
            "  c2c reuse eval --a SmolLM2-135M-Instruct --b SmolLM2-135M-ARC-LoRA --profile runs/reuse/p.json"
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
    prof.add_argument("--search", choices=SEARCHES, default="greedy",
                      help="how layers are ranked: 'greedy' adds, one at a time, the layer that brings B closest "
                           "to its own prefill together with those already chosen (default; about L*k "
                           "evaluations); 'sensitivity' ranks by each layer alone (L evaluations)")  # fmt: skip
    prof.add_argument("--out", type=output_file, default=Path("runs/reuse/profile.json"))
    prof.set_defaults(func=run_profile)
    gen = rsub.add_parser("generate", help="B answers from A's caches with a recompute plan")
    _models(gen)
    gen.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for a batch")
    gen.add_argument("--plan", default=None, help="'none', 'all' or groups like '0-2,10-12' (inclusive)")
    gen.add_argument("--profile", type=input_file, help="take the plan of --budget from a profile JSON")
    gen.add_argument("--budget", type=float, default=0.3, help="which profiled budget to use (default 0.3)")
    gen.add_argument("--save-capture", type=output_file, help="also write A's caches to this .safetensors file")
    gen.add_argument("--capture", type=input_file, help="reuse a saved capture instead of prefilling A")
    gen.add_argument("--max-new-tokens", type=positive_int, default=32)
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(func=run_generate)
    ev = rsub.add_parser("eval", help="accuracy and speed-up of a profile's plans on held-out questions")
    _models(ev)
    ev.add_argument("--profile", type=input_file, required=True, help="a profile JSON from 'c2c reuse profile'")
    ev.add_argument("--task", default="arc_easy", help="multiple-choice task (default arc_easy)")
    ev.add_argument("--split", default="validation")
    ev.add_argument("--limit", type=int, default=0, help="questions (default 0: the whole split)")
    ev.add_argument("--batch-size", type=positive_int, default=16)
    ev.add_argument("--out", type=output_file, default=Path("runs/reuse/eval.json"))
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=run_eval)
    d = LoraRecipe()
    ft = rsub.add_parser("finetune", help="LoRA fine-tune a model on a multiple-choice task (a same-base partner)",
                         description="Train a LoRA adapter (peft) on a task's letter answers and save it as an "
                                     "adapter folder; pass the folder as a model (--b DIR) and it is merged at load.")
    ft.add_argument("--base", default=d.base, help=f"the model to fine-tune (default {d.base})")
    ft.add_argument("--task", default=d.task, help=f"multiple-choice task (default {d.task})")
    ft.add_argument("--split", default=d.split, help=f"split to train on (default {d.split})")
    ft.add_argument("--steps", type=positive_int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    ft.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    ft.add_argument("--rank", type=positive_int, default=d.rank, help=f"LoRA rank (default {d.rank})")
    ft.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    ft.add_argument("--seed", type=int, default=d.seed)
    ft.add_argument("--device", default="cpu")
    ft.add_argument("--out", type=output_dir, required=True, help="adapter folder to write (a new or empty one)")
    ft.add_argument("--overwrite", action="store_true", help="replace what --out holds (once training finished)")
    ft.set_defaults(func=run_finetune)


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
    steps = profile_evaluations(b.model.config.num_hidden_layers, budgets, args.search)
    with tqdm(total=steps, desc=f"profiling {len(items)} prompts", unit="eval", dynamic_ncols=True) as bar:
        cap = capture(a, [prompt_for(it, "letter") for it in items])
        result = profile(b, cap, budgets, gold=[int(it.answer) for it in items],
                         choices=[[ids[0] for ids in letter_token_ids(b.tokenizer, len(it.choices))] for it in items],
                         search=args.search, progress=lambda: bar.update(1))  # fmt: skip
    result["bytes_per_token"] = cap.bytes_per_token()
    result["calibration"] = {"task": args.task, "split": args.split, "limit": len(items)}
    write_json(args.out, result)
    plot_profile(result, args.out.with_suffix(".png"))
    table = Table(title=f"{b.name} reusing {a.name}: {len(items)} calibration prompts, {args.search} plans -> "
                        f"{args.out}",
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
        plans = _profile_plans(args.profile)
        match = [p for p in plans if abs(p["budget"] - args.budget) < 1e-9]
        if not match:
            raise C2CError(f"profile has no budget {args.budget}; it has {[p['budget'] for p in plans]}")
        return RecomputePlan.parse(match[0]["plan"], num_layers)
    return RecomputePlan.parse(args.plan or "none", num_layers)


def _profile_plans(path: Path) -> list[dict]:
    """The plans of a profile JSON, checked field by field (a file of another shape is one line, not a traceback)."""
    try:
        plans = json.loads(path.read_text())["plans"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise C2CError(f"cannot read profile {path}: {type(e).__name__}: {e}") from None
    ok = isinstance(plans, list) and plans and all(
        isinstance(p, dict) and isinstance(p.get("budget"), (int, float)) and not isinstance(p.get("budget"), bool)
        and isinstance(p.get("plan"), str) for p in plans)  # fmt: skip
    if not ok:
        raise C2CError(f"{path} is not a profile from 'c2c reuse profile': expected \"plans\": a list of "
                       "{\"budget\": number, \"plan\": text}")  # fmt: skip
    return plans


def run_eval(args) -> int:
    if args.limit < 0:
        raise C2CError("--limit must be >= 0 (0: the whole split)")
    profiled = _profile_plans(args.profile)
    items = [it for it in get_task(args.task).load(args.split) if it.choices]
    if args.limit:
        items = random.Random(0).sample(items, min(args.limit, len(items)))
    a, b = _load_pair(args)
    n = b.model.config.num_hidden_layers
    plans = {f"{p['budget']:.2f}": RecomputePlan.parse(p["plan"], n) for p in profiled}
    result = evaluate_plans(a, b, items, plans, args.batch_size)
    result.update(task=args.task, split=args.split, profile=str(args.profile))
    write_json(args.out, result)
    plot_tradeoff(result, args.out.with_suffix(".png"))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table(title=f"{b.name} reusing {a.name}'s cache: {args.task}/{args.split}, n={result['n']} -> {args.out}",
                  caption=f"{a.name} alone: {result['a_accuracy']:.3f}; budget 1.00 is {b.name}'s own prefill",
                  title_justify="left")  # fmt: skip
    for c in ("budget", "plan", "accuracy", "95% CI", "agrees with B", "speed-up"):
        table.add_column(c)
    for p in result["plans"]:
        table.add_row(p["label"], p["plan"], f"{p['accuracy']:.3f}", f"{p['ci95'][0]:.3f}-{p['ci95'][1]:.3f}",
                      f"{p['agreement_with_b']:.3f}", f"{p['speedup_vs_full_prefill']:.2f}x")  # fmt: skip
    Console().print(table)
    return 0


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


def run_finetune(args) -> int:
    recipe = LoraRecipe(base=args.base, task=args.task, split=args.split, steps=args.steps,
                        batch_size=args.batch_size, rank=args.rank, alpha=2 * args.rank, lr=args.lr, seed=args.seed)
    log = finetune_lora(recipe, args.out, device=args.device, overwrite=args.overwrite)
    first, last = log["losses"][:10], log["losses"][-10:]
    print(f"adapter -> {args.out} ({log['trainable_params']:,} trainable parameters, {log['seconds']} s); "
          f"loss {sum(first) / len(first):.3f} (first 10 steps) -> {sum(last) / len(last):.3f} (last 10)")
    return 0
