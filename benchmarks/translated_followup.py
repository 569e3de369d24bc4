"""Time to first token of a follow-up question about a translated brief, against the receiver alone.

The sharer reads a brief once; its translated cache goes into the prefix store; every later question about it
costs only the receiver's reading of the question. This benchmark times, per question (median of --repeat):

    receiver            the receiver alone reads the question (no brief): the goal's reference
    translated_followup the translated brief comes from the store; the receiver reads the question
    translated_cold     the sharer reads the brief and the translator writes it, then the question
    receiver_brief      the receiver reads brief and question itself

    .venv/bin/python benchmarks/translated_followup.py --out docs/results/translated_followup.json

Prints a markdown table and writes JSON (default: the default pair and its shipped translator).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

from cache2cache.atomic import write_json
from cache2cache.caches.store import PrefixStore
from cache2cache.errors import C2CError
from cache2cache.evaluation.tasks import get_task
from cache2cache.inference.answerers import answerer
from cache2cache.inference.batching import Briefed, GenerateOptions, clock
from cache2cache.inference.factory import build
from cache2cache.inference.pipeline import C2CModel

FIRST_TOKEN = GenerateOptions(max_new_tokens=1)


def ttft(model, mode: str, prompt) -> float:
    t0 = clock(model.receiver.device)
    answerer(model, mode).generate([prompt], FIRST_TOKEN)
    return clock(model.receiver.device) - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--receiver", default="SmolLM2-135M-Instruct")
    p.add_argument("--sharer", default="Qwen2.5-Coder-1.5B-Instruct")
    p.add_argument("--translator", default=None, help="default: the one shipped for the pair")
    p.add_argument("--items", type=int, default=10, help="sciq_brief held-out items (brief + question)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("docs/results/translated_followup.json"))
    args = p.parse_args()
    from cache2cache.translation.translator import shipped_for

    translator = args.translator or shipped_for(args.receiver, args.sharer)
    if translator is None:
        sys.exit(f"error: no translator shipped for {args.receiver} <- {args.sharer}: pass --translator (`c2c fit`)")
    try:
        model = build(args.receiver, [args.sharer], translators=[translator])
    except C2CError as e:
        sys.exit(f"error: {e}")
    # the store holds translated briefs only for the translated paths; the receiver's own paths read their prompt
    # afresh every time (with a store they would be served the question from it after the warm-up)
    plain = C2CModel(model.receiver, model.sharers, model.fusers, translators=model.translators)
    model.store = PrefixStore(1 << 30)
    items = get_task("sciq_brief").load("heldout")[: args.items]
    rows = {m: [] for m in ("receiver", "translated_followup", "translated_cold", "receiver_brief")}
    for it in items:
        question = f"Question: {it.question}\nAnswer:"
        briefed = Briefed(question, it.brief)
        model.store.clear()
        rows["translated_cold"].append(ttft(model, "translated", briefed))  # translates and stores the brief
        for m, mode, prompt, key in ((plain, "receiver", question, "receiver"),
                                     (model, "translated", briefed, "translated_followup"),
                                     (plain, "receiver_brief", briefed, "receiver_brief")):  # fmt: skip
            ttft(m, mode, prompt)  # warm-up
            rows[key].append(statistics.median(ttft(m, mode, prompt) for _ in range(args.repeat)))
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {"receiver": args.receiver, "sharer": args.sharer, "items": len(items), "repeat": args.repeat,
              "ttft_s_median": med, "followup_over_receiver": med["translated_followup"] / med["receiver"],
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__}
    print("| path | median TTFT (s) | x receiver alone |\n|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.4f} | {v / med['receiver']:.2f} |")
    write_json(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
