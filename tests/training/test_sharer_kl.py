"""Distillation toward the sharer: the top-k KL, the sharer's targets (read off the cache it prefilled for
fusion), and a run on a same-vocabulary tiny pair that moves the fused receiver toward the sharer."""

import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cache2cache.errors import C2CError
from cache2cache.inference.pipeline import C2CModel
from cache2cache.training.config import load_config
from cache2cache.training.data import Conversation
from cache2cache.training.examples import build_examples, collate
from cache2cache.training.losses import MicroBatchLoss, topk_kl
from cache2cache.training.recipe import FuserTrainer
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
        top, ids = losses.sharer_targets(tb, model.prefill_sharers(tb.prompt))
    got = top.gather(-1, ids.argsort(-1)).gather(-1, tb.response_ids.unsqueeze(-1)).squeeze(-1)
    got = (got * tb.response_mask).sum(-1).view(2, 2).tolist()
    expected, _ = model.continuation_logprobs(["What colour is the sky at dusk?", "Name something big."],
                                              [[" red", " a blue whale"]] * 2, mode="sharer")
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-3)


def test_a_run_with_the_sharer_kl_moves_the_receiver_toward_the_sharer(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(TINY, [f"out_dir={out}", "receiver=tiny-llama", "sharer=tiny-llama-b", "max_steps=12",
                             "lr=3e-3", "sharer_kl_weight=1", "ce_loss_weight=0", "eval_every=12"])
    trainer = FuserTrainer(cfg)
    trainer.setup()
    try:
        trainer.train()
    finally:
        trainer.cleanup()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_sharer_kl"] for r in rows if r["kind"] == "val"]
    kl = [r["sharer_kl"] for r in rows if r["kind"] == "train"]
    assert len(val) >= 2 and val[-1] < val[0]
    assert sum(kl[-3:]) < sum(kl[:3])


def test_the_sharer_kl_needs_a_shared_vocabulary(tmp_path):
    cfg = load_config(TINY, [f"out_dir={tmp_path}", "sharer_kl_weight=1"])  # tiny-llama <- tiny-qwen2
    with pytest.raises(C2CError, match="vocabulary"):
        FuserTrainer(cfg).setup()
    with pytest.raises(C2CError, match="sharer_kl_weight"):
        load_config(TINY, ["sharer_kl_weight=-1"])
