"""`c2c generate`: answer prompts with the receiver reading the sharer's fused cache (or a baseline mode)."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from ..errors import C2CError
from ..inference.answerers import answerer
from ..inference.batching import Briefed, GenerateOptions, GenerationOutput
from ..inference.factory import DEFAULT_RECEIVER, DEFAULT_SHARER
from ..inference.modes import ANSWER_MODES, MODES
from ..inference.wire import human_bytes
from .common import (
    add_model_args,
    build_from_args,
    input_file,
    message_path,
    model_names,
    number,
    positive_int,
)


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="answer prompts through fused KV caches",
        description=(
            "The sharer(s) prefill the prompt, each fuser projects its sharer's KV cache into the receiver's\n"
            "cache, and the receiver answers from the fused cache. --mode receiver / sharer run the single-model\n"
            "baselines through the same code, --mode t2t is text-to-text (the sharer writes notes, the receiver\n"
            "reads them); --compare runs them all side by side. With --brief-file (a document only the sharer\n"
            "reads), --mode translated answers from the receiver's cache of it written by a translator.\n\n"
            f"Defaults: receiver {DEFAULT_RECEIVER}, sharer {DEFAULT_SHARER} (pulled on first use) and the\n"
            "fuser shipped for them. With another pair and no --fuser an untrained fuser is used, which leaves\n"
            "the receiver's answer unchanged."
        ),
        epilog=(
            "examples:\n"
            "  c2c generate --prompt 'Why is the sky blue?' --compare\n"
            "  c2c generate --receiver tiny-llama --sharer tiny-qwen2 --prompt a --prompt b --json\n"
            "  c2c generate --fuser runs/my-fuser --prompt 'Explain GQA' --stream\n"
            "  c2c generate --brief-file report.txt --prompt 'What did it conclude?' --compare\n"
            "      (only the sharer reads report.txt; C2C's answer can know it only through the fuser, the\n"
            "       translated answer only through the translator's cache of it)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for a batch")
    p.add_argument("--prompt-file", type=input_file, help="a file with one prompt per line (batched)")
    p.add_argument("--brief-file", type=input_file, help="a document only the sharer reads, before each prompt")
    p.add_argument("--mode", choices=ANSWER_MODES, default="c2c", help="who answers (default c2c)")
    p.add_argument("--compare", action="store_true", help="run receiver, sharer, t2t and c2c side by side")
    p.add_argument("--t2t-tokens", type=positive_int, default=64, help="the sharer's note budget in t2t mode")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=number, default=1.0)
    p.add_argument("--top-p", type=number, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--stream", action="store_true", help="print tokens as they are decoded (one prompt)")
    p.add_argument("--json", action="store_true", help="print one JSON object (texts, token counts, timings)")
    p.set_defaults(func=run)


def _prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file:
        try:
            prompts += [line for line in args.prompt_file.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise C2CError(f"cannot read prompt file {args.prompt_file}: {e}") from None
    if not prompts:
        raise C2CError("give at least one --prompt or a --prompt-file")
    return prompts


def _brief(args) -> str:
    if not args.brief_file:
        return ""
    try:
        brief = args.brief_file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise C2CError(f"cannot read brief file {args.brief_file}: {e}") from None
    if not brief.strip():
        raise C2CError(f"brief file {args.brief_file} is empty")
    return brief


def run(args) -> int:
    prompts = _prompts(args)
    brief = _brief(args)
    asked = [Briefed(p, brief) for p in prompts] if brief else prompts
    options = GenerateOptions(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                              temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
    _, sharers, _ = model_names(args)
    if args.compare:  # translated only where there is a brief (without one it is the receiver alone)
        modes = [m for m in ANSWER_MODES if brief or not MODES[m].brief] if sharers else ["receiver"]
        modes += ["receiver_brief"] if brief else []  # the upper bound: the receiver reads the brief itself
    else:
        modes = [args.mode]
    if MODES[args.mode].brief and not brief and not args.compare:
        raise C2CError(f"--mode {args.mode} answers from a translated brief: give --brief-file")
    if args.stream and (len(prompts) > 1 or args.json or args.compare or args.mode.startswith("t2t")):
        raise C2CError("--stream takes exactly one prompt, a mode other than t2t, and no --json/--compare")
    console = Console(stderr=True)
    model = build_from_args(args)
    if "translated" in modes and not model.translators:
        if not args.compare:
            raise C2CError("--mode translated needs a --translator (fit one with `c2c fit`)")
        modes.remove("translated")
    if args.stream:
        for piece in model.stream(asked[0], modes[0], options):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    outputs, sent = [], []
    for mode in modes:
        with console.status(f"generating ({mode}, {len(prompts)} prompt(s))..."):
            ans = answerer(model, mode, args.t2t_tokens)
            outputs.append(ans.generate(asked, options))
        sent.append(sum(ans.sent(q, r.notes) for q, r in zip(asked, outputs[-1].results)))
    if args.json:
        print(json.dumps({
            "receiver": model.receiver.name,
            "sharers": [s.name for s in model.sharers],
            "fusers": [{"path": f.source, "untrained": f.source is None} for f in model.fusers],
            "fuser_parameters": [f.num_parameters() for f in model.fusers],
            **message_path(model),  # which translators and knob the translated answers were served under
            "prompts": prompts,
            "brief_chars": len(brief),
            "outputs": [{**o.to_dict(), "wire_bytes": b} for o, b in zip(outputs, sent)],
        }, indent=2, ensure_ascii=False))  # fmt: skip
    else:
        _print(prompts, outputs, sent, model)
    return 0


def _print(prompts: list[str], outputs: list[GenerationOutput], sent: list[int], model) -> None:
    console = Console()
    names = {"c2c": f"C2C ({model.receiver.name} <- {', '.join(s.name for s in model.sharers)})",
             "receiver": f"receiver alone ({model.receiver.name})",
             "t2t": "T2T (sharer writes notes, receiver reads them)",
             "t2t_blind": "T2T blind (sharer writes notes on the brief alone, receiver reads them)",
             "translated": "translated (receiver reads the sharer's translated cache of the brief)",
             "receiver_brief": "receiver reads the brief itself (the upper bound)",
             "sharer": f"sharer alone ({model.sharers[0].name})" if model.sharers else "sharer"}  # fmt: skip
    if knob := model.heads.recompute.space():  # the fidelity knob's share of the receiver's own reading
        names["translated"] += f", under the knob {knob.lstrip('+')}"
    for i, prompt in enumerate(prompts):
        table = Table(title=f"prompt {i + 1}: {prompt[:100]}", title_justify="left", show_lines=True)
        table.add_column("mode", style="bold")
        table.add_column("answer")
        table.add_column("tokens", justify="right")
        for out in outputs:
            r = out.results[i]
            table.add_row(names[out.mode], r.text.strip(), f"{r.prompt_tokens}+{r.new_tokens}")
        console.print(table)
    timing = Table(title="timings for the whole batch (seconds)", title_justify="left")
    for col in ("mode", "T2T notes", "sharer prefill", "fuse", "answerer prefill", "decode", "total", "sent"):
        timing.add_column(col, justify="right" if col != "mode" else "left")
    for out, b in zip(outputs, sent):
        t = out.timings
        phases = (t.t2t_sharer_s, t.sharer_prefill_s, t.fuse_s, t.receiver_prefill_s, t.decode_s, t.total_s)
        timing.add_row(out.mode, *(f"{v:.3f}" for v in phases), human_bytes(b))
    console.print(timing)
