"""Same-base cache reuse, part 3: offline profiling of which layers B must recompute.

On calibration prompts, B's own prefill gives the reference next-token distribution. A layer's sensitivity is
KL(reference || B with only that layer's KV taken from A, everything else recomputed). Under a recompute
budget (a fraction of the layers) the plan recomputes the most sensitive layers, merged into contiguous
groups. Every plan is then measured: KL, agreement of the top token with the reference, accuracy where the
prompts have gold answers, and the time to build B's cache vs B's full prefill.
"""

from __future__ import annotations

import math
import time

import torch

from ..models.loading import LoadedModel
from .capture import Capture
from .partial import RecomputePlan, build_cache, next_token_logits


def kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean KL(reference || other) over the batch, from logits."""
    p = reference.log_softmax(-1)
    q = other.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def layer_sensitivity(b: LoadedModel, cap: Capture, reference: torch.Tensor) -> list[float]:
    n = len(cap.keys)
    out = []
    for layer in range(n):
        plan = RecomputePlan.of([g for g in ((0, layer), (layer + 1, n)) if g[0] < g[1]], n)
        out.append(kl(reference, next_token_logits(b, cap, plan)))
    return out


def plan_for_budget(sensitivity: list[float], budget: float) -> RecomputePlan:
    """Recompute the ceil(budget * L) most sensitive layers (ties: the earlier layer first)."""
    n = len(sensitivity)
    k = min(n, math.ceil(budget * n - 1e-9))
    chosen = sorted(sorted(range(n), key=lambda i: (-sensitivity[i], i))[:k])
    return RecomputePlan.of([(i, i + 1) for i in chosen], n)


def timed_build(b: LoadedModel, cap: Capture, plan: RecomputePlan, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        build_cache(b, cap, plan)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def profile(b: LoadedModel, cap: Capture, budgets: list[float], gold: list[list[int]] | None = None,
            choices: list[list[int]] | None = None, repeats: int = 3) -> dict:  # fmt: skip
    """Sensitivities, and one measured plan per budget. `choices[i]` are token ids whose logits decide prompt
    i's answer and `gold[i]` its index, for accuracy; without them only KL and top-1 agreement are reported."""
    n = len(cap.keys)
    reference = next_token_logits(b, cap, RecomputePlan.parse("all", n))
    sens = layer_sensitivity(b, cap, reference)
    full_s = timed_build(b, cap, RecomputePlan.parse("all", n), repeats)

    def accuracy(logits: torch.Tensor) -> float | None:
        if not gold or not choices:
            return None
        picks = [int(torch.argmax(logits[i, torch.tensor(c)])) for i, c in enumerate(choices)]
        return sum(p == g for p, g in zip(picks, gold)) / len(gold)

    plans = []
    for budget in sorted(set(budgets) | {0.0, 1.0}):
        plan = plan_for_budget(sens, budget)
        logits = next_token_logits(b, cap, plan)
        build_s = timed_build(b, cap, plan, repeats)
        plans.append({"budget": budget, "plan": str(plan), "recomputed_layers": len(plan.layers),
                      "kl": kl(reference, logits),
                      "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
                      "accuracy": accuracy(logits), "build_s": build_s, "speedup_vs_full_prefill": full_s / build_s})  # fmt: skip
    return {"model_a": cap.model, "model_b": b.name, "layers": n, "prompts": int(cap.ids.shape[0]),
            "sensitivity_kl": sens, "full_prefill_s": full_s, "reference_accuracy": accuracy(reference),
            "plans": plans}  # fmt: skip


def plot_tradeoff(result: dict, out) -> None:
    """Accuracy against prefill speed-up, one point per plan, from `evaluate_plans`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plans = sorted(result["plans"], key=lambda p: p["speedup_vs_full_prefill"])
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [p["speedup_vs_full_prefill"] for p in plans]
    y = [p["accuracy"] for p in plans]
    err = [[p["accuracy"] - p["ci95"][0] for p in plans], [p["ci95"][1] - p["accuracy"] for p in plans]]
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=4)
    for p in plans:
        ax.annotate(p["label"], (p["speedup_vs_full_prefill"], p["accuracy"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.axhline(result["a_accuracy"], color="grey", ls="--", lw=1, label=f"{result['model_a']} alone")
    ax.set_xlabel("B's cache-build speed-up vs its full prefill")
    ax.set_ylabel(f"accuracy, {result['task']}/{result['split']} (95% CI)")
    ax.set_title(f"{result['model_b']} reusing {result['model_a']} (labels: recompute budget)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_profile(result: dict, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.bar(range(result["layers"]), result["sensitivity_kl"])
    a.set_xlabel("layer reused from A (all others recomputed)")
    a.set_ylabel("KL to B's own prefill")
    a.set_title(f"per-layer sensitivity: {result['model_b']} reusing {result['model_a']}", fontsize=9)
    plans = result["plans"]
    b.plot([p["speedup_vs_full_prefill"] for p in plans], [p["kl"] for p in plans], "o-")
    for p in plans:
        b.annotate(f"{p['budget']:.2f}", (p["speedup_vs_full_prefill"], p["kl"]), fontsize=7)
    b.set_xlabel("prefill speed-up vs B's full prefill")
    b.set_ylabel("KL to B's own prefill")
    b.set_title("trade-off (labels: recompute budget)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
