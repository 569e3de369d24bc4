"""`c2c eval`: accuracy of receiver, sharer, text-to-text and cache-to-cache on a task, side by side."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..evaluation.progress import Progress, choose_output
from ..evaluation.runner import EvalConfig, Evaluator, paired_line, select_items, summarise, write_results
from ..evaluation.scoring import METHODS
from ..evaluation.tasks import TASKS, mmlu_subjects
from ..inference.modes import EVAL_MODES, modes_help
from ..inference.wire import human_bytes
from .common import (
    add_model_args,
    build_from_args,
    layer_list,
    message_path,
    model_names,
    output_dir,
    positive_int,
    recompute_from_args,
)


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy of receiver / sharer / T2T / C2C on a task",
        description=(
            "Evaluate several modes on one task through the same prompts and code: receiver alone, sharer alone,\n"
            "t2t (the sharer writes notes in text, the receiver answers with them), c2c (the receiver answers\n"
            "from the fused cache). Scoring: letter (logits of the option letters after 'The correct answer is',\n"
            "the C2C paper's protocol), cloze (option log-likelihood, for base models), generate (answer\n"
            "extraction). Writes records.jsonl, summary.json (95% CIs), results.md and PNG plots to --out.\n"
            f"Tasks: {', '.join(TASKS)}, or jsonl:PATH with {{question, choices, answer}} lines."
        ),
        epilog=(
            "examples:\n"
            "  c2c eval --task arc_easy --split validation --limit 100\n"
            "  c2c eval --task mmlu --split validation --subjects astronomy,virology --modes receiver,c2c\n"
            "  c2c eval --task gsm8k --split test --method generate --limit 20 --modes receiver,t2t\n"
            "  c2c eval --task jsonl:my_questions.jsonl --split all --receiver tiny-llama --sharer tiny-qwen2\n\n"
            "modes (a control's gain over the receiver is not communication):\n" + modes_help()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--task", default="arc_easy", help="task name or jsonl:PATH (default arc_easy)")
    p.add_argument("--split", default="validation", help="split (default validation; 'all' for jsonl tasks)")
    p.add_argument("--modes", default=",".join(EVAL_MODES), help=f"comma list from {', '.join(EVAL_MODES)}")
    p.add_argument("--method", choices=METHODS, default="letter", help="how answers are scored (default letter)")
    p.add_argument("--limit", type=positive_int, default=None, help="a seeded random sample of N items")
    p.add_argument("--subjects", default="", help="comma list of MMLU subjects (default all)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--t2t-tokens", type=positive_int, default=64, help="the sharer's text budget in t2t mode")
    p.add_argument("--gen-tokens", type=positive_int, default=256, help="generation budget (method generate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    p.add_argument("--out", type=output_dir, default=None,
                   help="results folder (default runs/eval/TASK_SPLIT, or TASK_SPLIT-2, -3, ... if that holds a "
                        "finished evaluation); an interrupted evaluation with the same settings continues there")
    p.add_argument("--overwrite", action="store_true", help="replace what --out already holds")
    p.add_argument("--close-gates", type=layer_list, default=[], metavar="LAYERS",
                   help="ablation: shut the fuser's gates at these receiver layers, e.g. 0-14")
    p.add_argument("--list-tasks", action="store_true", help="list tasks, splits and MMLU subjects, then exit")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.list_tasks:
        for t in TASKS.values():
            print(f"{t.name:15} {t.kind:4} splits: {', '.join(t.splits):28} {t.description}")
        print("mmlu subjects: " + ", ".join(mmlu_subjects()))
        return 0
    cfg = EvalConfig(task=args.task, split=args.split, modes=[m.strip() for m in args.modes.split(",") if m.strip()],
                     method=args.method, limit=args.limit or 0,
                     subjects=[s.strip() for s in args.subjects.split(",") if s.strip()], batch_size=args.batch_size,
                     t2t_tokens=args.t2t_tokens, gen_tokens=args.gen_tokens, seed=args.seed)  # fmt: skip
    items = select_items(cfg)  # bad task / split / file fails before any model loads
    default = Path("runs/eval") / f"{args.task.replace(':', '_').replace('/', '_')}_{args.split}"
    header = {"config": asdict(cfg), "receiver": args.receiver, "sharers": args.sharer,
              "fusers": [str(f) for f in args.fuser], "close_gates": args.close_gates, "dtype": args.dtype,
              "chat": not args.no_chat}  # fmt: skip
    knob = recompute_from_args(args).meta()
    if args.translator or any(knob.values()):  # (older headers had neither: their runs still continue)
        header |= {"translators": [str(t) for t in args.translator], **knob}
    out = choose_output(args.out, default, header, args.overwrite)  # before minutes of work, not after
    # the receiver alone never runs a sharer: with a trained fuser to describe it, load the sharer's tokenizer and
    # config, not gigabytes of weights
    model = build_from_args(args, skeleton_sharers=set(cfg.modes) <= {"receiver"} and bool(model_names(args)[2]))
    for fuser in model.fusers:
        fuser.close_gates(args.close_gates)
    evaluator = Evaluator(model, cfg)
    progress = Progress(out, header, args.overwrite)
    if progress.done:
        print(f"continuing the interrupted evaluation in {out}: {len(progress.done)} records already scored",
              file=sys.stderr)  # fmt: skip
    records = evaluator.run(items, progress)
    identities = {"receiver": model.receiver.name, "sharers": [s.name for s in model.sharers],
                  "fusers": [f.source or "untrained" for f in model.fusers], "closed_gates": args.close_gates,
                  "dtypes": {"receiver": str(model.receiver.model.dtype),
                             "sharers": [str(s.model.dtype) for s in model.sharers]},
                  **message_path(model)}  # fmt: skip
    summary = summarise(records, cfg, identities)
    write_results(out, records, summary)
    progress.finish()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    table = Table(title=f"{cfg.task} / {cfg.split} ({cfg.method}), {len(items)} items -> {out}", title_justify="left",
                  caption="\n".join(paired_line(p) for p in summary["paired"]) or None)  # fmt: skip
    for col in ("mode", "accuracy", "95% CI", "latency/example (s)", "sent/example"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, m in summary["modes"].items():
        table.add_row(mode, f"{m['accuracy']:.3f}", f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]",
                      f"{m['latency_s_mean']['total_s']:.3f}", human_bytes(m["wire_bytes_mean"]))  # fmt: skip
    Console().print(table)
    return 0
