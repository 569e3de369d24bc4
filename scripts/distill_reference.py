"""How close each translator brings the receiver to the sharer's reading, beside the receiver's own reading: on
held-out passages, the KL from the sharer's next-token distribution (nats per token the receiver reads after the
translated span, each passage translated up to 60% and 100%, distill.HELD_CUTS) of (a) the receiver reading the
passage itself and (b) the receiver reading each translator's translation of it. A map trained toward the sharer
(`c2c fit --distill-target sharer`) that beats (a) carries more of the sharer's reading than the text gives.
With `--exchanges SPEC` (as `c2c fit --distill-on` reads them; the first fifth is what its distillation held out)
each brief is translated whole and only the answer's tokens count, as the distillation scores them.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/distill_reference.py --receiver Qwen2.5-Coder-0.5B-Instruct \
        --sharer Qwen2.5-Coder-1.5B-Instruct --text sciq:400,boolq:400 --skip 680 --n 12 \
        runs/translators/qwen05_from_15 runs/translators/qwen05_kd --out docs/results/distill_reference.json
    OMP_NUM_THREADS=1 .venv/bin/python scripts/distill_reference.py --receiver Qwen2.5-Coder-0.5B-Instruct \
        --sharer Qwen2.5-Coder-1.5B-Instruct --exchanges note:sciq:240,note:commonsense_qa:120 --n 72 \
        runs/translators/qwen05_ridge runs/translators/qwen05_notes --out runs/distill_reference_notes.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from cache2cache.models.loading import load_model
from cache2cache.training.exchanges import exchanges
from cache2cache.translation.distill import (
    HELD_CUTS,
    cut_of,
    record_exchanges,
    student_logits,
    teacher_logprobs,
    unscored,
)
from cache2cache.translation.refine import record
from cache2cache.translation.text import passages
from cache2cache.translation.translator import Translator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("translators", nargs="+", type=Path)
    p.add_argument("--receiver", required=True)
    p.add_argument("--sharer", required=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="passages as c2c fit reads them (take the held-out fifth's)")
    what.add_argument("--exchanges", help="exchanges as c2c fit --distill-on reads them (the first --n)")
    p.add_argument("--skip", type=int, default=0)
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--max-chars", type=int, default=1200)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    receiver, sharer = load_model(args.receiver), load_model(args.sharer, prefill_only=True)
    vocab = receiver.model.get_output_embeddings().weight.shape[0]
    if args.exchanges:
        pairs = record_exchanges(receiver, sharer, exchanges(args.exchanges)[args.skip:args.skip + args.n])
    else:
        pairs = record(receiver, sharer, passages(args.text, args.max_chars)[args.skip:args.skip + args.n])
    checks = [(pair, c) for pair in pairs for c in dict.fromkeys(cut_of(pair, f) for f in HELD_CUTS)]
    targets = [teacher_logprobs(sharer, pair, c, vocab)[unscored(pair, c):] for pair, c in checks]

    @torch.no_grad()
    def kl(logp_of) -> dict[str, float]:
        """Mean KL over the scored tokens; and at the first of them (an exchange's answer starts there): the KL, and
        how often the receiver's most likely token is the sharer's."""
        out = {"all": 0.0, "first": 0.0, "first_top1_agrees": 0.0}
        for (pair, c), t in zip(checks, targets):
            logp = logp_of(pair, c)[unscored(pair, c):]
            out["all"] += F.kl_div(logp, t, log_target=True, reduction="batchmean").item() / len(checks)
            out["first"] += F.kl_div(logp[:1], t[:1], log_target=True, reduction="batchmean").item() / len(checks)
            out["first_top1_agrees"] += float(logp[0].argmax() == t[0].argmax()) / len(checks)
        return out

    rows = {"the receiver reads the passage itself": kl(lambda pair, c: teacher_logprobs(receiver, pair, c, vocab))}
    for path in args.translators:
        t = Translator.from_pretrained(path, receiver.device)
        rows[f"translated by {path}"] = kl(lambda pair, c: student_logits(t, receiver, pair, c).float()[:, :vocab]
                                           .log_softmax(-1))  # fmt: skip
    kind = "exchanges (answer tokens only)" if args.exchanges else "passages"
    print(f"KL from {args.sharer}'s reading, nats per token, {len(pairs)} {kind}, {len(checks)} checks "
          "(all scored tokens / the first of them / the first token's top-1 agreeing with the sharer's):")
    for name, v in rows.items():
        print(f"  {v['all']:7.3f}  {v['first']:7.3f}  {v['first_top1_agrees']:6.1%}  {name}")
    args.out.write_text(json.dumps({"receiver": args.receiver, "sharer": args.sharer, "text": args.text,
                                    "exchanges": args.exchanges,
                                    "skip": args.skip, "passages": len(pairs), "cuts": HELD_CUTS, "kl": rows},
                                   indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
