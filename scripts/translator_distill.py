"""Distil a translator end to end (translation/distill.py) on recorded passages, from a fitted one.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/translator_distill.py --pairs runs/translate/distill_pairs.safetensors \
        --text sciq:440,boolq:440 --skip 680 --out runs/translators/distilled

The passages (`--text`, after the first `--skip` of them: by default the 341st-440th SciQ support paragraphs and
BoolQ passages, none among the default fit's 400) are read by both models once and kept in `--pairs`; a fifth is
held out. Prints the held-out KL before and after.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cache2cache.inference.factory import DEFAULT_TRANSLATOR
from cache2cache.models.loading import load_model
from cache2cache.translation.distill import distill
from cache2cache.translation.refine import load_pairs, record, save_pairs
from cache2cache.translation.text import passages
from cache2cache.translation.translator import Translator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--translator", default=str(DEFAULT_TRANSLATOR))
    p.add_argument("--pairs", type=Path, required=True)
    p.add_argument("--text", default="sciq:440,boolq:440")
    p.add_argument("--skip", type=int, default=680)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    translator = Translator.from_pretrained(args.translator)
    receiver = load_model(translator.config.receiver)
    if args.pairs.is_file():
        pairs = load_pairs(args.pairs)
    else:
        sharer = load_model(translator.config.sharer, prefill_only=True)
        pairs = record(receiver, sharer, passages(args.text)[args.skip:], queries=False)
        save_pairs(pairs, args.pairs)
        del sharer
    k = max(1, len(pairs) // 5)
    report = distill(translator, receiver, pairs[k:], pairs[:k], steps=args.steps, lr=args.lr, batch=args.batch)
    translator.config.fit["distilled"]["text"] = f"{args.text} after the first {args.skip} passages"
    translator.save_pretrained(args.out)
    print(f"held-out KL {report.kl_before:.4f} -> {report.kl_after:.4f} (step {report.best_step}); wrote {args.out}")


if __name__ == "__main__":
    main()
