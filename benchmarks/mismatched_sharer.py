"""Control: does C2C's accuracy come from the sharer's cache of *this* question, or from what the fuser learned
to add regardless (answer-style priors)? Scores the same cloze questions three ways: receiver alone, C2C, and
C2C with every question fused with the sharer's cache of *another* question of the batch (rows rotated by one,
the alignment stretched to the other prompt's length). If C2C's gain is transfer, the mismatched run falls back
towards the receiver; if it is a prior, it stays.

    python benchmarks/mismatched_sharer.py --fuser DIR --task arc_easy --limit 100
"""

from __future__ import annotations

import argparse
import platform
from datetime import date
from pathlib import Path

import torch
from tqdm import tqdm

from cache2cache.atomic import write_json
from cache2cache.evaluation.runner import EvalConfig, select_items
from cache2cache.evaluation.scoring import mcnemar_exact, prompt_for
from cache2cache.inference.controls import rotate_sharers
from cache2cache.inference.factory import DEFAULT_RECEIVER, DEFAULT_SHARER, build
from cache2cache.inference.pipeline import Batch, C2CModel, right_pad


@torch.no_grad()
def cloze_picks(model: C2CModel, items, mismatch: bool) -> list[int]:
    """C2C cloze predictions; with `mismatch`, row b is fused with row b+1's sharer cache."""
    prompts = [prompt_for(it, "cloze") for it in items]
    options = [[f" {c}" for c in it.choices] for it in items]
    rows = [model.receiver.tokenizer(o, add_special_tokens=False)["input_ids"] for opts in options for o in opts]
    batch = model.encode(prompts, "c2c", new_tokens=max(map(len, rows)))
    caches = model.prefill_sharers(batch)
    if mismatch:
        batch = rotate_sharers(batch, caches)
    cache = model.prefill_answerer(batch, model.receiver)
    model.fuse(cache, caches, batch)
    owner = torch.tensor([i for i, opts in enumerate(options) for _ in opts])
    cache.batch_select_indices(owner)
    ids, mask = right_pad(rows, 0, batch.ids.device)
    logp = model.continuation_logits(Batch(batch.ids[owner], batch.mask[owner], []), cache, model.receiver, ids,
                                     mask).float().log_softmax(-1)  # fmt: skip
    flat = (logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask).sum(-1).tolist()
    picks, k = [], 0
    for opts in options:
        per_char = [v / len(o) for v, o in zip(flat[k:k + len(opts)], opts)]
        picks.append(max(range(len(opts)), key=per_char.__getitem__))
        k += len(opts)
    return picks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuser", required=True)
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--subjects", default="", help="MMLU subjects (default all)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model = build(DEFAULT_RECEIVER, [DEFAULT_SHARER], [args.fuser])
    items = select_items(EvalConfig(task=args.task, split=args.split, modes=["c2c"], method="cloze", limit=args.limit,
                                    subjects=[s for s in args.subjects.split(",") if s]))  # fmt: skip
    right = {"c2c": [], "mismatched": []}
    for i in tqdm(range(0, len(items), args.batch_size), desc="batches"):
        chunk = items[i:i + args.batch_size]
        if len(chunk) < 2:
            chunk = items[i - 1:i + 1]  # a rotation needs two rows; score the last item with its neighbour
            right["c2c"].append(cloze_picks(model, chunk, False)[-1] == chunk[-1].answer)
            right["mismatched"].append(cloze_picks(model, chunk, True)[-1] == chunk[-1].answer)
            continue
        for name, mismatch in (("c2c", False), ("mismatched", True)):
            right[name] += [p == it.answer for p, it in zip(cloze_picks(model, chunk, mismatch), chunk)]
    only_c2c = sum(a and not b for a, b in zip(right["c2c"], right["mismatched"]))
    only_mis = sum(b and not a for a, b in zip(right["c2c"], right["mismatched"]))
    result = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "fuser": args.fuser, "task": args.task, "split": args.split, "n": len(items),
              "c2c_accuracy": sum(right["c2c"]) / len(items), "mismatched_accuracy": sum(right["mismatched"]) / len(items),
              "only_c2c_right": only_c2c, "only_mismatched_right": only_mis,
              "mcnemar_p": mcnemar_exact(only_c2c, only_mis),
              "records": [{"id": it.id, "gold": it.answer, "c2c": a, "mismatched": b}
                          for it, a, b in zip(items, right["c2c"], right["mismatched"])]}  # fmt: skip
    print(f"{args.task}/{args.split} n={len(items)}: C2C {result['c2c_accuracy']:.3f}, sharer cache of another question "
          f"{result['mismatched_accuracy']:.3f} (+{only_c2c}/-{only_mis}, p = {result['mcnemar_p']:.3g})")  # fmt: skip
    out = args.out or Path(f"docs/results/mismatched_sharer_{args.task}.json")
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
