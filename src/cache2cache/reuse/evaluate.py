"""Same-base cache reuse, part 4: the measurement that matters. On held-out questions (not the calibration
set), for each plan: B's accuracy when it answers from A's reused cache, its agreement with B's own prefill, and
the time to build B's cache (B's time to first token, less one token's forward) against B's full prefill.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..evaluation.scoring import pick_letter, prompt_for, wilson_interval
from ..evaluation.tasks import Item
from ..models.loading import LoadedModel
from .capture import capture
from .partial import RecomputePlan, build_cache, first_token_logits, next_token_logits
from .profile import timed_build


def _picks(model: LoadedModel, logits: torch.Tensor, items: list[Item]) -> list[int]:
    return [pick_letter(model.tokenizer, row, len(it.choices)) for row, it in zip(logits, items)]


@torch.no_grad()
def evaluate_plans(a: LoadedModel, b: LoadedModel, items: list[Item], plans: dict[str, RecomputePlan],
                   batch_size: int = 16) -> dict:  # fmt: skip
    """Accuracy, agreement with B's own answer, and cache-build time per plan, over `items` (letter protocol).
    Also A's own accuracy, for reference. Plans are keyed by a label (e.g. the budget)."""
    stats = {k: {"correct": 0, "agree": 0, "build_s": 0.0} for k in plans}
    own = {"a_correct": 0, "b_full_s": 0.0}
    for start in tqdm(range(0, len(items), batch_size), desc="reuse eval", unit="batch"):
        batch = items[start:start + batch_size]
        gold = [int(it.answer) for it in batch]
        cap = capture(a, [prompt_for(it, "letter") for it in batch])
        full = RecomputePlan.parse("all", len(cap.keys))
        a_logits = next_token_logits(a, cap, RecomputePlan(()))  # A reading its own captured cache
        own["a_correct"] += sum(p == g for p, g in zip(_picks(a, a_logits, batch), gold))
        build_cache(b, cap, full)  # warm-up, so the first timed build is not the slowest
        cache, seconds = timed_build(b, cap, full, repeats=1)
        own["b_full_s"] += seconds
        reference = _picks(b, first_token_logits(b, cap, cache), batch)
        for label, plan in plans.items():
            cache, seconds = timed_build(b, cap, plan, repeats=1)
            picks = _picks(b, first_token_logits(b, cap, cache), batch)
            stats[label]["correct"] += sum(p == g for p, g in zip(picks, gold))
            stats[label]["agree"] += sum(p == r for p, r in zip(picks, reference))
            stats[label]["build_s"] += seconds
    total = len(items)
    rows = []
    for label, plan in plans.items():
        s = stats[label]
        rows.append({"label": label, "plan": str(plan), "recomputed_layers": len(plan.layers),
                     "accuracy": s["correct"] / total, "ci95": wilson_interval(s["correct"], total),
                     "agreement_with_b": s["agree"] / total, "build_s": s["build_s"],
                     "speedup_vs_full_prefill": own["b_full_s"] / s["build_s"]})  # fmt: skip
    return {"model_a": a.name, "model_b": b.name, "n": total, "a_accuracy": own["a_correct"] / total,
            "b_full_prefill_s": own["b_full_s"], "plans": rows}  # fmt: skip
