"""The lever table of cache translation: several translators solved from one set of fitting moments, each
evaluated on the receiver-blind probes with its control, the sharer reading every brief only once.

    .venv/bin/python scripts/translator_levers.py --stats runs/translators/X.stats.safetensors \
        --variant all=keys,values,embedding:keys,values,embedding --variant noemb=keys,values:keys,values \
        --task sciq_brief:0 --task passage_cloze:150 --out docs/results/translator_levers.json

A variant is NAME=KEY_FEATURES:VALUE_FEATURES[:width=N][:refine=PAIRS_FILE] (width: the central N sharer
layers of each window) (PAIRS_FILE: passages recorded with
translation.refine.record + save_pairs; the key maps are then refined against the receiver's attention), or
NAME=DIR for a saved translator. A task is NAME:LIMIT (0 = every held-out item). Per task, the receiver alone and
the receiver reading the brief itself are evaluated once; per variant, translated and translated_mismatched.
Prints a markdown table (accuracy, the share of the receiver -> receiver_brief gap closed, translated vs its
control with the exact McNemar p) and writes JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cache2cache.atomic import write_json
from cache2cache.caches.store import PrefixStore
from cache2cache.evaluation.runner import EvalConfig, Evaluator, discordant, select_items
from cache2cache.evaluation.scoring import mcnemar_exact
from cache2cache.inference.pipeline import C2CModel
from cache2cache.models.loading import load_model
from cache2cache.translation.fit import FitState, solve
from cache2cache.translation.refine import load_pairs, refine_keys
from cache2cache.translation.translator import Translator


def variants(specs: list[str], stats: Path | None, receiver) -> dict[str, Translator]:
    state = FitState.load(stats) if stats else None
    out = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        parts = rest.split(":")
        if len(parts) == 1:
            out[name] = Translator.from_pretrained(parts[0])
            continue
        if state is None:
            sys.exit("error: feature variants need --stats")
        width = next((int(x.removeprefix("width=")) for x in parts[2:] if x.startswith("width=")), None)
        t = solve(state, parts[0].split(","), parts[1].split(","), progress=False, width=width)
        for extra in parts[2:]:
            if extra.startswith("refine="):
                pairs = load_pairs(Path(extra.removeprefix("refine=")))
                k = max(1, len(pairs) // 5)
                refine_keys(t, receiver, pairs[k:], pairs[:k])
        out[name] = t
        print(f"{name}: {t.num_parameters():,} parameters", file=sys.stderr)
    return out


def accuracy(records: list[dict], mode: str) -> dict[str, bool]:
    return {r["id"]: r["correct"] for r in records if r["mode"] == mode}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--receiver", default="SmolLM2-135M-Instruct")
    p.add_argument("--sharer", default="Qwen2.5-Coder-1.5B-Instruct")
    p.add_argument("--stats", type=Path, default=None)
    p.add_argument("--variant", action="append", default=[])
    p.add_argument("--task", action="append", default=[])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    receiver = load_model(args.receiver)
    translators = variants(args.variant, args.stats, receiver)
    sharer = load_model(args.sharer, prefill_only=True)
    store = PrefixStore(6 << 30)
    result = {"receiver": receiver.name, "sharer": sharer.name, "threads": torch.get_num_threads(), "tasks": {}}
    for spec in args.task:
        task, _, limit = spec.partition(":")
        base = C2CModel(receiver, [sharer], [], store=store, translators=[next(iter(translators.values()))])
        cfg = EvalConfig(task, "heldout", ["receiver", "receiver_brief"], method="cloze", limit=int(limit or 0),
                         batch_size=args.batch_size)  # fmt: skip
        items = select_items(cfg)
        records = Evaluator(base, cfg).run(items)
        rec, upper = accuracy(records, "receiver"), accuracy(records, "receiver_brief")
        row = {"n": len(items), "receiver": sum(rec.values()) / len(rec), "receiver_brief": sum(upper.values()) / len(upper),
               "variants": {}}  # fmt: skip
        for name, t in translators.items():
            model = C2CModel(receiver, [sharer], [], store=store, translators=[t])
            vcfg = EvalConfig(task, "heldout", ["translated", "translated_mismatched"], method="cloze",
                              limit=int(limit or 0), batch_size=args.batch_size)  # fmt: skip
            vrec = Evaluator(model, vcfg).run(items)
            tr, mm = accuracy(vrec, "translated"), accuracy(vrec, "translated_mismatched")
            acc_t, acc_m = sum(tr.values()) / len(tr), sum(mm.values()) / len(mm)
            _, only_m, only_t = discordant(mm, tr)
            _, only_r, only_t2 = discordant(rec, tr)
            gap = row["receiver_brief"] - row["receiver"]
            row["variants"][name] = {"translated": acc_t, "translated_mismatched": acc_m,
                                     "gap_closed": (acc_t - row["receiver"]) / gap if gap else None,
                                     "vs_control": [only_t, only_m, mcnemar_exact(only_m, only_t)],
                                     "vs_receiver": [only_t2, only_r, mcnemar_exact(only_r, only_t2)],
                                     "parameters": t.num_parameters()}  # fmt: skip
            write_json(args.out, result | {"tasks": result["tasks"] | {task: row}})
        result["tasks"][task] = row
    write_json(args.out, result)
    print("| task | n | receiver | receiver_brief | variant | translated | mismatched | gap closed | "
          "vs control (+/-, p) | vs receiver (+/-, p) |\n|---|---:|---:|---:|---|---:|---:|---:|---|---|")
    for task, row in result["tasks"].items():
        for name, v in row["variants"].items():
            gc = f"{v['gap_closed']:.0%}" if v["gap_closed"] is not None else "-"
            print(f"| {task} | {row['n']} | {row['receiver']:.3f} | {row['receiver_brief']:.3f} | {name} | "
                  f"{v['translated']:.3f} | {v['translated_mismatched']:.3f} | {gc} | "
                  f"+{v['vs_control'][0]}/-{v['vs_control'][1]}, {v['vs_control'][2]:.4f} | "
                  f"+{v['vs_receiver'][0]}/-{v['vs_receiver'][1]}, {v['vs_receiver'][2]:.4f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
