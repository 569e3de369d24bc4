"""Same-base cache reuse on tiny models: a model and its perturbed copy (tiny-llama / tiny-llama-ft), and
perturbed copies of the Gemma-3 (sliding window) and Qwen2 tiny models."""

import json
from pathlib import Path

import pytest
import torch

from cache2cache import C2CModel, load_model
from cache2cache.cli.main import main
from cache2cache.errors import C2CError
from cache2cache.models.loading import LoadedModel
from cache2cache.reuse.capture import Capture, capture
from cache2cache.reuse.compat import check_same_base
from cache2cache.reuse.partial import RecomputePlan, build_cache, next_token_logits
from cache2cache.reuse.profile import (
    greedy_order,
    kl,
    plan_for_budget,
    profile,
    profile_evaluations,
    sensitivity_order,
)

from ..conftest import tiny

PROMPTS = ["What is the capital of France? The correct answer is", "hi",
           "a prompt long enough to overflow the eight-token sliding window of the tiny gemma model"]


def _perturbed(name: str) -> LoadedModel:
    m = load_model(name)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return m


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3", "tiny-qwen2"])
def pair(request):
    if request.param == "tiny-llama":
        return tiny("tiny-llama"), tiny("tiny-llama-ft")
    return tiny(request.param), _perturbed(request.param)


def test_recompute_everything_equals_b_own_prefill(pair):
    a, b = pair
    cap = capture(a, PROMPTS)
    n = len(cap.keys)
    own = C2CModel(b).next_token_logits(PROMPTS, "receiver")
    assert torch.equal(next_token_logits(b, cap, RecomputePlan.parse("all", n)), own)
    batch = C2CModel(b).encode(PROMPTS, "receiver")
    b_cache = C2CModel(b).prefill_answerer(batch, b)
    reused = build_cache(b, cap, RecomputePlan.parse("all", n))
    for i in range(n):
        assert torch.equal(reused.layers[i].keys, b_cache.layers[i].keys)


def test_reuse_everything_equals_a_cache(pair):
    a, b = pair
    cap = capture(a, PROMPTS)
    reused = build_cache(b, cap, RecomputePlan.parse("none", len(cap.keys)))
    a_cache = C2CModel(a).prefill_answerer(C2CModel(a).encode(PROMPTS, "receiver"), a)
    for i in range(len(cap.keys)):
        assert torch.equal(reused.layers[i].keys, a_cache.layers[i].keys)
        assert torch.equal(reused.layers[i].values, a_cache.layers[i].values)
    # ... so B reading A's whole cache differs from B's own prefill (the models differ).
    own = C2CModel(b).next_token_logits(PROMPTS, "receiver")
    assert (next_token_logits(b, cap, RecomputePlan.parse("none", len(cap.keys))) - own).abs().max() > 1e-3


def test_partial_plan_recomputes_only_its_layers(pair):
    a, b = pair
    cap = capture(a, PROMPTS)
    n = len(cap.keys)
    plan = RecomputePlan.of([(1, 3)], n)
    reused = build_cache(b, cap, plan)
    a_cache = C2CModel(a).prefill_answerer(C2CModel(a).encode(PROMPTS, "receiver"), a)
    for i in range(n):
        same = torch.equal(reused.layers[i].keys, a_cache.layers[i].keys)
        assert same == (i not in plan.layers)


def test_building_a_cache_leaves_the_shared_model_untouched(pair):
    """While B recomputes a group, its model is as it was (same layers, no hooks): a server's other requests can
    run the same model at the same time. Checked from inside the group's forward, while the build runs."""
    a, b = pair
    cap = capture(a, PROMPTS)
    layers = list(b.model.model.layers)
    seen = []

    def check(module, args, output):
        seen.append(list(b.model.model.layers) == layers and not any(layer._forward_pre_hooks for layer in layers))

    handle = layers[2].register_forward_hook(check)
    try:
        build_cache(b, cap, RecomputePlan.parse("2-3", len(cap.keys)))
        assert seen == [True]  # the group ran, and the model it ran on was unchanged meanwhile
        own = C2CModel(b).next_token_logits(PROMPTS, "receiver")
    finally:
        handle.remove()
    assert torch.equal(next_token_logits(b, cap, RecomputePlan.parse("all", len(cap.keys))), own)


def test_capture_round_trips_through_safetensors(tmp_path):
    a, b = tiny("tiny-llama"), tiny("tiny-llama-ft")
    cap = capture(a, PROMPTS)
    cap.save(tmp_path / "c.safetensors")
    loaded = Capture.load(tmp_path / "c.safetensors")
    plan = RecomputePlan.of([(0, 1), (3, 4)], 4)
    assert torch.equal(next_token_logits(b, cap, plan), next_token_logits(b, loaded, plan))
    sizes = cap.bytes_per_token()
    assert sizes["kv"] == 4 * 2 * 2 * 16 * 4  # layers x (K, V) x kv heads x head dim x fp32 bytes
    assert sizes["e_cache"] == 4 * 64 * 4  # layers x hidden x fp32 bytes
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(C2CError, match="not a cache2cache cache file"):
        Capture.load(tmp_path / "bad.safetensors")
    # the capture file is the caches' own format: one PromptCache per prompt, loadable as such
    from cache2cache.caches.prompt_cache import load_caches

    caches = load_caches(tmp_path / "c.safetensors")
    assert [c.token_ids + c.meta["pending"] for c in caches] == [c.token_ids + c.meta["pending"] for c in cap.caches]
    assert all(c.hidden is not None and c.identity.name == "tiny-llama" for c in caches)


def test_plans_validate():
    assert RecomputePlan.parse("0-1,2-3", 8).groups == ((0, 4),)  # touching groups merge
    assert str(RecomputePlan.parse("5,1-2", 8)) == "1-2,5-5"
    assert RecomputePlan.parse("none", 8).layers == [] and len(RecomputePlan.parse("all", 8).layers) == 8
    for bad in ("3-9", "x", "2-1", "0-3,2-4"):
        with pytest.raises(C2CError):
            RecomputePlan.parse(bad, 8)
    order = sensitivity_order([0.1, 0.9, 0.8, 0.0])
    assert order == [1, 2, 0, 3]
    assert str(plan_for_budget(order, 0.5)) == "1-2"
    assert plan_for_budget(order, 0.0).groups == () and str(plan_for_budget(order, 1.0)) == "0-3"


def test_incompatible_pairs_are_refused():
    with pytest.raises(C2CError, match="different cache shapes"):
        check_same_base(tiny("tiny-llama"), tiny("tiny-qwen2"))
    check_same_base(tiny("tiny-llama"), tiny("tiny-llama-b"))  # same shapes and tokenizer: allowed
    cap = capture(tiny("tiny-llama"), ["hello there"])
    with pytest.raises(C2CError, match="does not fit"):
        build_cache(tiny("tiny-qwen2"), cap, RecomputePlan.parse("none", 6))


def test_profile_reports_every_budget():
    a, b = tiny("tiny-llama"), tiny("tiny-llama-ft")
    cap = capture(a, PROMPTS)
    result = profile(b, cap, [0.25, 0.5], repeats=1)
    # B differs from A in every layer, so recomputing any one of them moves B's answer distribution
    assert len(result["sensitivity_kl"]) == 4 and all(s > 0 for s in result["sensitivity_kl"])
    budgets = [p["budget"] for p in result["plans"]]
    assert budgets == [0.0, 0.25, 0.5, 1.0]
    assert result["plans"][-1]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert result["plans"][0]["kl"] > result["plans"][1]["kl"] > 0  # reusing all of A's cache costs the most
    assert result["plans"][-1]["top1_agreement"] == 1.0


def test_cli(capsys, tmp_path):
    code = main(["reuse", "generate", "--a", "tiny-llama", "--b", "tiny-llama-ft", "--prompt", "hi there",
                 "--plan", "0-1", "--max-new-tokens", "3", "--json", "--save-capture", str(tmp_path / "c.st")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["plan"] == "0-1" and len(out["texts"]) == 1 and (tmp_path / "c.st").is_file()
    code = main(["reuse", "generate", "--a", "tiny-llama", "--b", "tiny-gemma3", "--prompt", "x"])
    assert code == 2 and "different cache shapes" in capsys.readouterr().err
    code = main(["reuse", "generate", "--a", "tiny-llama", "--b", "tiny-llama-ft", "--prompt", "x", "--plan", "7-9"])
    assert code == 2 and "outside" in capsys.readouterr().err


def test_cli_profile_then_eval_on_held_out_questions(tmp_path, capsys):
    task = f"jsonl:{Path(__file__).resolve().parents[2] / 'examples' / 'tiny_mc.jsonl'}"
    prof = tmp_path / "p.json"
    assert main(["reuse", "profile", "--a", "tiny-llama", "--b", "tiny-llama-ft", "--task", task, "--split", "all",
                 "--limit", "4", "--budgets", "0.5", "--out", str(prof)]) == 0  # fmt: skip
    out = tmp_path / "e.json"
    assert main(["reuse", "eval", "--a", "tiny-llama", "--b", "tiny-llama-ft", "--profile", str(prof), "--task", task,
                 "--split", "all", "--batch-size", "3", "--out", str(out), "--json"]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    plans = {p["label"]: p for p in result["plans"]}
    assert set(plans) == {"0.00", "0.50", "1.00"} and out.with_suffix(".png").is_file()
    assert plans["1.00"]["agreement_with_b"] == 1.0  # recomputing everything is B's own prefill
    assert all(0 <= p["accuracy"] <= 1 and p["speedup_vs_full_prefill"] > 0 for p in plans.values())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # a missing file is refused when the arguments are parsed
        main(["reuse", "eval", "--a", "tiny-llama", "--b", "tiny-llama-ft", "--profile", str(tmp_path / "nope")])
    assert exit_.value.code == 2 and "no such file" in capsys.readouterr().err


def test_greedy_search_ranks_jointly_and_ends_at_b_own_prefill():
    a, b = tiny("tiny-llama"), tiny("tiny-llama-ft")
    cap = capture(a, PROMPTS)
    n = len(cap.keys)
    reference = next_token_logits(b, cap, RecomputePlan.parse("all", n))
    calls = []
    order, curve = greedy_order(b, cap, reference, n, progress=lambda: calls.append(1))
    assert sorted(order) == list(range(n)) and len(calls) == n * (n + 1) // 2
    assert curve[-1] == 0.0  # every layer recomputed: exactly B's own prefill
    for k in range(1, n + 1):  # each step's KL is the KL of the plan made of the first k layers
        plan = RecomputePlan.of([(i, i + 1) for i in order[:k]], n)
        assert kl(reference, next_token_logits(b, cap, plan)) == pytest.approx(curve[k - 1], abs=1e-6)
    # the first pick is the single layer whose recompute helps most
    alone = [kl(reference, next_token_logits(b, cap, RecomputePlan.of([(i, i + 1)], n))) for i in range(n)]
    assert order[0] == min(range(n), key=alone.__getitem__)


def test_profile_plans_nest_and_count_their_evaluations():
    a, b = tiny("tiny-llama"), tiny("tiny-llama-ft")
    cap = capture(a, PROMPTS)
    for search in ("greedy", "sensitivity"):
        calls = []
        result = profile(b, cap, [0.25, 0.5], repeats=1, search=search, progress=lambda: calls.append(1))
        assert len(calls) == profile_evaluations(4, [0.25, 0.5], search)
        layers = [set(RecomputePlan.parse(p["plan"], 4).layers) for p in result["plans"]]
        assert all(x <= y for x, y in zip(layers, layers[1:]))  # a larger budget contains a smaller one
        assert result["plans"][-1]["kl"] == 0.0 and result["search"] == search
    with pytest.raises(C2CError, match="plan search"):
        profile(b, cap, [0.5], search="random")
