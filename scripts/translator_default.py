"""How the shipped default translator was made, from the moments `c2c fit` gathers, step by step:

    OMP_NUM_THREADS=1 .venv/bin/c2c fit --text sciq:200,boolq:200 --window 3 --refine 0 --out runs/translators/v1_all \
        --key-features keys,values,embedding --value-features keys,values,embedding   # gathers the moments once
    .venv/bin/python scripts/translator_default.py --stats runs/translators/v1_all.stats.safetensors

1. ridge maps from the moments of the 400 fitting passages (`sciq:200,boolq:200`): keys from the nearest sharer
   layer's keys and the receiver's token embedding, values from the three nearest sharer layers' values and the
   embedding;
2. 120 further passages (the 341st-400th of each source: not among the 400) read again with the receiver's
   queries; the key maps refined against the receiver's attention, then the value maps against its attention
   output through the refined keys (96 train, 24 held out);
3. then every map at once, distilled end to end on the same passages (translation/distill.py: the receiver reading
   a passage translated up to a random cut predicts the rest as after reading it itself; 300 Adam steps of 4
   passages, lr 3e-5 relative, the best held-out step kept; the shipped weights were distilled by
   scripts/translator_distill.py from the session-9 shipped translator, i.e. from the bfloat16 copy of step 2);
4. saved in bfloat16 into the package, its fitting text spelled out in config.json and README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cache2cache.inference.factory import DEFAULT_TRANSLATOR
from cache2cache.models.loading import load_model
from cache2cache.translation.distill import distill
from cache2cache.translation.fit import FitState, solve
from cache2cache.translation.refine import record, refine_keys, refine_values
from cache2cache.translation.text import passages


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stats", type=Path, required=True)
    p.add_argument("--out", type=Path, default=DEFAULT_TRANSLATOR)
    args = p.parse_args()
    state = FitState.load(args.stats)
    translator = solve(state, ["keys", "embedding"], ["values", "embedding"], width=1, value_width=3)
    receiver = load_model(state.layout["receiver"])
    sharer = load_model(state.layout["sharer"], prefill_only=True)
    pairs = record(receiver, sharer, passages("sciq:400,boolq:400")[680:800])
    refine_keys(translator, receiver, pairs[24:], pairs[:24], steps=200, lr=1e-3)
    refine_values(translator, receiver, pairs[24:], pairs[:24], steps=200, lr=1e-3)
    distill(translator, receiver, pairs[24:], pairs[:24], steps=300, lr=3e-5, batch=4)
    for kind in ("refined_keys", "refined_values", "distilled"):
        translator.config.fit[kind]["text"] = (
            "120 passages: the 341st to 400th SciQ support paragraphs and BoolQ passages of the same sources (not "
            "among the 400 of the ridge fit)")  # fmt: skip
    translator.config.fit["text"] = (
        "sciq:200,boolq:200 (SciQ support paragraphs outside the sciq_brief/sciq_cloze held-out fifth; BoolQ "
        "passages no held-out BoolQ record uses; each cut to 1200 characters)")  # fmt: skip
    translator.save_pretrained(args.out, dtype=torch.bfloat16)
    print(f"wrote {args.out} ({translator.num_parameters():,} parameters)")


if __name__ == "__main__":
    main()
