"""Same-base cache reuse, part 3: offline profiling of which layers B must recompute.

On calibration prompts, B's own prefill gives the reference next-token distribution. A layer's sensitivity is
KL(reference || B with only that layer's KV taken from A, everything else recomputed). Plans come from a
ranking of the layers; a budget (a fraction of the layers) recomputes a prefix of it, merged into contiguous
groups, so a larger budget always contains a smaller one. Two rankings:
- "greedy" (default): start from reusing everything and repeatedly add the layer that, together with those
  already chosen, brings B closest to its own prefill. It sees interactions between layers, which single-layer
  sensitivities miss (on the real LoRA pair, adding the 4th most sensitive layer made agreement worse).
- "sensitivity": the layers by single-layer sensitivity (L evaluations instead of about L * k).
Every plan is then measured: KL, agreement of the top token with the reference, accuracy where the prompts
have gold answers, and the time to build B's cache vs B's full prefill.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers import Cache

from ..errors import C2CError
from ..inference.batching import clock
from ..models.loading import LoadedModel
from ..plotting import pyplot
from .capture import Capture
from .partial import GroupKV, RecomputePlan, build_cache, first_token_logits, next_token_logits

SEARCHES = ("greedy", "sensitivity")  # how layers are ranked for recompute plans (see the module docstring)


def kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean KL(reference || other) over the batch, from logits."""
    p = reference.log_softmax(-1)
    q = other.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def layer_sensitivity(b: LoadedModel, cap: Capture, reference: torch.Tensor,
                      progress: Callable[[], None] | None = None) -> list[float]:  # fmt: skip
    n = len(cap.keys)
    out = []
    for layer in range(n):
        plan = RecomputePlan.of([g for g in ((0, layer), (layer + 1, n)) if g[0] < g[1]], n)
        out.append(kl(reference, next_token_logits(b, cap, plan)))
        if progress:
            progress()
    return out


def sensitivity_order(sensitivity: list[float]) -> list[int]:
    """Layers from the most to the least sensitive (ties: the earlier layer first)."""
    return sorted(range(len(sensitivity)), key=lambda i: (-sensitivity[i], i))


def greedy_order(b: LoadedModel, cap: Capture, reference: torch.Tensor, max_layers: int,
                 progress: Callable[[], None] | None = None) -> tuple[list[int], list[float]]:  # fmt: skip
    """Forward selection of up to `max_layers` layers to recompute, each step adding the layer that minimises
    KL to B's own prefill jointly with those already chosen. Returns the order and the KL after each step."""
    n = len(cap.keys)
    order: list[int] = []
    curve: list[float] = []
    memo: GroupKV = {}  # a candidate plan shares all groups but one with the current plan: compute only that one
    for _ in range(min(max_layers, n)):
        current = RecomputePlan.of([(i, i + 1) for i in order], n).groups
        memo = {g: kv for g, kv in memo.items() if g in current}
        best: tuple[float, int] | None = None
        for layer in (i for i in range(n) if i not in order):
            plan = RecomputePlan.of([(i, i + 1) for i in order + [layer]], n)
            score = kl(reference, next_token_logits(b, cap, plan, memo))
            if progress:
                progress()
            if best is None or score < best[0]:
                best = (score, layer)
        assert best is not None
        order.append(best[1])
        curve.append(best[0])
    return order, curve


def layers_for_budget(budget: float, num_layers: int) -> int:
    return min(num_layers, math.ceil(budget * num_layers - 1e-9))


def greedy_depth(budgets: list[float], num_layers: int) -> int:
    """How many layers the greedy search must rank: those of the largest budget short of everything."""
    return max((layers_for_budget(x, num_layers) for x in budgets if x < 1.0), default=0)


def profile_evaluations(num_layers: int, budgets: list[float], search: str) -> int:
    """How many cache builds `profile` reports through its progress callback (for a progress bar)."""
    greedy = sum(num_layers - k for k in range(greedy_depth(budgets, num_layers))) if search == "greedy" else 0
    return num_layers + greedy + len(set(budgets) | {0.0, 1.0})


def plan_for_budget(order: list[int], budget: float) -> RecomputePlan:
    """Recompute the first ceil(budget * L) layers of a ranking of all L layers."""
    n = len(order)
    return RecomputePlan.of([(i, i + 1) for i in order[:layers_for_budget(budget, n)]], n)


def timed_build(b: LoadedModel, cap: Capture, plan: RecomputePlan, repeats: int) -> tuple[Cache, float]:
    """B's cache for `plan` and the median time to build it over `repeats` builds."""
    times = []
    for _ in range(repeats):
        t0 = clock(b.device)
        cache = build_cache(b, cap, plan)
        times.append(clock(b.device) - t0)
    return cache, sorted(times)[len(times) // 2]


def profile(b: LoadedModel, cap: Capture, budgets: list[float], gold: list[list[int]] | None = None,
            choices: list[list[int]] | None = None, repeats: int = 3, search: str = "greedy",
            progress: Callable[[], None] | None = None) -> dict:  # fmt: skip
    """Sensitivities, a ranking of the layers (`search`), and one measured plan per budget. `choices[i]` are
    token ids whose logits decide prompt i's answer and `gold[i]` its index, for accuracy; without them only
    KL and top-1 agreement are reported."""
    if search not in SEARCHES:
        raise C2CError(f"unknown plan search {search!r}: choose from {', '.join(SEARCHES)}")
    n = len(cap.keys)
    budgets = sorted(set(budgets) | {0.0, 1.0})  # both baselines are always measured
    full_cache, full_s = timed_build(b, cap, RecomputePlan.parse("all", n), repeats)
    reference = first_token_logits(b, cap, full_cache)
    sens = layer_sensitivity(b, cap, reference, progress)
    order = sensitivity_order(sens)
    greedy_curve = None
    if search == "greedy":
        chosen, greedy_curve = greedy_order(b, cap, reference, greedy_depth(budgets, n), progress)
        order = chosen + [i for i in order if i not in chosen]

    def accuracy(logits: torch.Tensor) -> float | None:
        if not gold or not choices:
            return None
        picks = [int(torch.argmax(logits[i, torch.tensor(c)])) for i, c in enumerate(choices)]
        return sum(p == g for p, g in zip(picks, gold)) / len(gold)

    plans = []
    for budget in budgets:
        plan = plan_for_budget(order, budget)
        cache, build_s = timed_build(b, cap, plan, repeats)
        logits = first_token_logits(b, cap, cache)
        if progress:
            progress()
        plans.append({"budget": budget, "plan": str(plan), "recomputed_layers": len(plan.layers),
                      "kl": kl(reference, logits),
                      "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
                      "accuracy": accuracy(logits), "build_s": build_s, "speedup_vs_full_prefill": full_s / build_s})
    return {"model_a": cap.model, "model_b": b.name, "layers": n, "prompts": int(cap.ids.shape[0]),
            "search": search, "order": order, "greedy_kl": greedy_curve, "sensitivity_kl": sens,
            "full_prefill_s": full_s, "reference_accuracy": accuracy(reference), "plans": plans}  # fmt: skip


def plot_tradeoff(result: dict, out) -> None:
    """Accuracy and agreement with B's own answer against prefill speed-up (log scale: reusing everything is a
    copy, hundreds of times faster), one point per plan, from `evaluate_plans`."""
    plt = pyplot()

    plans = sorted(result["plans"], key=lambda p: p["speedup_vs_full_prefill"])
    x = [p["speedup_vs_full_prefill"] for p in plans]
    fig, (acc, agree) = plt.subplots(1, 2, figsize=(11, 4))
    y = [p["accuracy"] for p in plans]
    err = [[p["accuracy"] - p["ci95"][0] for p in plans], [p["ci95"][1] - p["accuracy"] for p in plans]]
    acc.errorbar(x, y, yerr=err, fmt="o-", capsize=4)
    acc.axhline(result["a_accuracy"], color="grey", ls="--", lw=1, label=f"{result['model_a']} alone")
    acc.set_ylabel(f"accuracy, {result['task']}/{result['split']}, n={result['n']} (95% CI)")
    acc.legend(fontsize=8)
    agree.plot(x, [p["agreement_with_b"] for p in plans], "o-")
    agree.set_ylabel("same answer as B's own prefill")
    for ax, key in ((acc, "accuracy"), (agree, "agreement_with_b")):
        ax.set_xscale("log")
        ax.set_xlabel("B's cache-build speed-up vs its full prefill (log)")
        for p, xi in zip(plans, x):
            ax.annotate(p["label"], (xi, p[key]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    fig.suptitle(f"{result['model_b']} reusing {result['model_a']}'s cache (labels: recompute budget)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_profile(result: dict, out) -> None:
    plt = pyplot()

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
