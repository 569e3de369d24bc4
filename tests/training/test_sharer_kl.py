"""Distillation toward the sharer: the top-k KL, the sharer's targets (read off the cache it prefilled for
fusion; across tokenizers, over the token strings both hold at shared boundaries), and runs on tiny pairs that
move the fused receiver toward the sharer."""

import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cache2cache.errors import C2CError
from cache2cache.inference.pipeline import C2CModel
from cache2cache.kl import topk_kl
from cache2cache.training import losses as losses_module
from cache2cache.training.config import load_config
from cache2cache.training.data import Conversation
from cache2cache.training.examples import build_examples, collate
from cache2cache.training.losses import MicroBatchLoss
from cache2cache.training.recipe import FuserTrainer
from cache2cache.training.targets import VocabBridge, sharer_rows
from tests.conftest import make_fuser, tiny

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.toml"


def test_topk_kl_is_the_full_kl_at_k_equal_v_and_a_lower_bound_below():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 50), torch.randn(2, 3, 50) * 2
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    t = teacher.log_softmax(-1)
    full = F.kl_div(student.log_softmax(-1), t, log_target=True, reduction="none").sum(-1)
    expected = (full * mask).sum()
    top = t.topk(50, -1)
    assert torch.allclose(topk_kl(student, top.values, top.indices, mask), expected, atol=1e-4)
    top5 = t.topk(5, -1)
    coarse = topk_kl(student, top5.values, top5.indices, mask)
    assert 0 < coarse < expected  # coarsening the distributions can only lose divergence
    same = topk_kl(teacher, top5.values, top5.indices, mask)
    assert same.abs() < 1e-5


def test_sharer_targets_are_the_sharers_own_continuation_scores():
    receiver, sharer = tiny("tiny-llama"), tiny("tiny-llama-b")
    model = C2CModel(receiver, [sharer], [make_fuser(receiver, sharer)])
    cfg = load_config(TINY, ["receiver=tiny-llama", "sharer=tiny-llama-b", "sharer_kl_weight=1",
                             "sharer_kl_top_k=100000"])
    convs = [Conversation([{"role": "user", "content": q}], "red", options=["red", "a blue whale"], answer=0)
             for q in ("What colour is the sky at dusk?", "Name something big.")]
    examples, _ = build_examples(model.aligners[0], convs, 128, 16)
    tb = collate(model, examples)
    losses = MicroBatchLoss(model, cfg, contextlib.nullcontext)
    with torch.no_grad():
        top, ids, mask = losses.sharer_targets(tb, model.prefill_sharers(tb.prompt))
    assert torch.equal(mask, tb.response_mask)
    got = top.gather(-1, ids.argsort(-1)).gather(-1, tb.response_ids.unsqueeze(-1)).squeeze(-1)
    got = (got * tb.response_mask).sum(-1).view(2, 2).tolist()
    expected, _ = model.continuation_logprobs(["What colour is the sky at dusk?", "Name something big."],
                                              [[" red", " a blue whale"]] * 2, mode="sharer")
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-3)


def _kl_run(out, *overrides) -> tuple[list[float], list[float]]:
    """A tiny run; its validation and training KL from the sharer, in order."""
    trainer = FuserTrainer(load_config(TINY, [f"out_dir={out}", *overrides]))
    trainer.setup()
    try:
        trainer.train()
    finally:
        trainer.cleanup()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return ([r["val_sharer_kl"] for r in rows if r["kind"] == "val"],
            [r["sharer_kl"] for r in rows if r["kind"] == "train"])  # fmt: skip


def test_a_run_with_the_sharer_kl_moves_the_receiver_toward_the_sharer(tmp_path):
    val, kl = _kl_run(tmp_path / "run", "receiver=tiny-llama", "sharer=tiny-llama-b", "max_steps=12", "lr=3e-3",
                      "sharer_kl_weight=1", "ce_loss_weight=0", "eval_every=12")
    assert len(val) >= 2 and val[-1] < val[0]
    assert sum(kl[-3:]) < sum(kl[:3])


def test_across_tokenizers_the_target_is_the_sharers_distribution_over_the_strings_both_hold():
    receiver, sharer = tiny("tiny-llama"), tiny("tiny-qwen2")
    bridge = VocabBridge.between(receiver.tokenizer, sharer.tokenizer)
    assert not bridge.identical and 0.5 < bridge.coverage < 1
    for r, s in list(zip(bridge.receiver_ids.tolist(), bridge.sharer_ids.tolist()))[::97]:
        assert receiver.tokenizer.decode([r]) == sharer.tokenizer.decode([s])
    row = receiver.tokenizer.encode(" a blue whale", add_special_tokens=False)
    rows = sharer_rows(receiver.tokenizer, sharer.tokenizer, [row], len(row))
    assert rows.at[0, 0] == 0 and (rows.at[0] >= 0).sum() >= 2  # every row starts on a shared boundary
    model = C2CModel(receiver, [sharer], [make_fuser(receiver, sharer)])
    cfg = load_config(TINY, ["sharer_kl_weight=1", "sharer_kl_top_k=100000"])
    prompts = ["What colour is the sky at dusk?", "Name something big."]
    convs = [Conversation([{"role": "user", "content": q}], "red", options=["red", "a blue whale"], answer=0)
             for q in prompts]
    tb = collate(model, build_examples(model.aligners[0], convs, 128, 16)[0])
    losses = MicroBatchLoss(model, cfg, contextlib.nullcontext)
    with torch.no_grad():
        top, ids, mask = losses.sharer_targets(tb, model.prefill_sharers(tb.prompt))
        first = model.next_token_logits(prompts, mode="sharer").float()  # the sharer after each prompt
    expected = first[:, bridge.sharer_ids].log_softmax(-1)
    got = top.gather(-1, ids.argsort(-1))[[0, 2], 0]  # each prompt's first option row, its first token
    assert torch.allclose(got, expected, atol=1e-3)
    assert mask[:, 0].all() and mask.sum() <= tb.response_mask.sum()


def test_a_cross_tokenizer_run_moves_the_receiver_toward_the_sharer_and_low_coverage_is_refused(tmp_path,
                                                                                                monkeypatch):
    out = tmp_path / "run"
    _, kl = _kl_run(out, "max_steps=12", "lr=3e-3", "sharer_kl_weight=1", "ce_loss_weight=0", "eval_every=12")
    assert sum(kl[-3:]) < sum(kl[:3])
    monkeypatch.setattr(losses_module, "MIN_COVERAGE", 1.01)
    with pytest.raises(C2CError, match="vocabulary"):
        FuserTrainer(load_config(TINY, [f"out_dir={tmp_path / 'r2'}", "sharer_kl_weight=1"])).setup()
    with pytest.raises(C2CError, match="sharer_kl_weight"):
        load_config(TINY, ["sharer_kl_weight=-1"])
