"""What distillation toward the sharer across tokenizers can compare (training/targets.py): on training questions
of the bundled sets, the share of option-token positions where both tokenizations start a token, and there the
share of each model's next-token probability mass on the token strings both vocabularies hold. Prints a table,
writes JSON.

    .venv/bin/python benchmarks/kd_coverage.py --out docs/results/kd_coverage.json      # the default pair
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import random
from datetime import date
from pathlib import Path

import torch

from cache2cache import __version__
from cache2cache.atomic import write_json
from cache2cache.inference.factory import DEFAULT_RECEIVER, DEFAULT_SHARER, untrained_fuser
from cache2cache.inference.pipeline import C2CModel
from cache2cache.models.loading import load_model
from cache2cache.training.config import TrainConfig
from cache2cache.training.examples import build_examples, collate
from cache2cache.training.losses import MicroBatchLoss
from cache2cache.training.mixture import load_source


def shared_mass(logp: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor) -> list[float]:
    """Probability mass on the token ids `ids` at the positions `keep` marks."""
    return logp[..., ids].logsumexp(-1)[keep].exp().tolist()


@torch.no_grad()
def measure(receiver, sharer, sets: list[str], per_set: int, batch: int) -> dict:
    model = C2CModel(receiver, [sharer], [untrained_fuser(receiver, sharer)])  # a pipeline to align prompts
    losses = MicroBatchLoss(model, TrainConfig(sharer_kl_weight=1.0), contextlib.nullcontext)  # reads the targets
    bridge = losses.bridge
    convs = []
    for name in sets:
        got, _ = load_source(name)
        random.Random(0).shuffle(got)
        convs += got[:per_set]
    examples, _ = build_examples(model.aligners[0], convs, 128, 16)
    positions = comparable = 0
    mass_s, mass_r = [], []
    for i in range(0, len(examples), batch):
        tb = collate(model, examples[i:i + batch])
        s_logits, keep = losses.sharer_logits(tb, model.prefill_sharers(tb.prompt))
        r_logits = losses.continuation_logits(tb, model.prefill_answerer(tb.prompt, receiver))  # no fusion
        keep = keep.bool()
        positions += int(tb.response_mask.sum())
        comparable += int(keep.sum())
        mass_s += shared_mass(s_logits.float().log_softmax(-1), bridge.sharer_ids, keep)
        mass_r += shared_mass(r_logits.float().log_softmax(-1), bridge.receiver_ids, keep)
    return {"examples": len(examples), "option_positions": positions, "shared_boundary": comparable / positions,
            "sharer_mass_on_shared": sum(mass_s) / len(mass_s), "receiver_mass_on_shared": sum(mass_r) / len(mass_r),
            "receiver_strings_shared": bridge.coverage}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--receiver", default=DEFAULT_RECEIVER)
    ap.add_argument("--sharer", default=DEFAULT_SHARER)
    ap.add_argument("--sets", default="sciq,commonsense_qa,social_i_qa,piqa", help="bundled question sets")
    ap.add_argument("--per-set", type=int, default=10, help="questions from each (training four fifths)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="JSON file")
    args = ap.parse_args()
    receiver = load_model(args.receiver)
    sharer = load_model(args.sharer, prefill_only=True)
    result = measure(receiver, sharer, args.sets.split(","), args.per_set, args.batch)
    print(f"{args.receiver} <- {args.sharer}, {result['examples']} questions, {result['option_positions']} option "
          "tokens")  # fmt: skip
    print("| what | share |\n|---|---:|")
    for key in ("receiver_strings_shared", "shared_boundary", "sharer_mass_on_shared", "receiver_mass_on_shared"):
        print(f"| {key.replace('_', ' ')} | {result[key]:.1%} |")
    if args.out:
        write_json(args.out, {"receiver": args.receiver, "sharer": args.sharer, **result, "version": __version__,
                              "machine": platform.machine(), "date": str(date.today())})  # fmt: skip


if __name__ == "__main__":
    main()
