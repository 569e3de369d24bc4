"""The mismatched-sharer control: each row gets the next row's sharer cache, its alignment stretched onto it."""

import pytest
import torch

from cache2cache.errors import C2CError
from cache2cache.inference.controls import rotate_sharers
from cache2cache.inference.pipeline import C2CModel

from .conftest import make_fuser, tiny

PROMPTS = ["Question: What colour is the sky on a clear day?\nAnswer:", "Question: 2 + 2?\nAnswer:",
           "Question: Which metal is liquid at room temperature, and why does it matter?\nAnswer:"]  # fmt: skip


def test_rows_get_the_next_rows_sharer_cache_with_the_alignment_stretched():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(r, [s], [make_fuser(r, s)])
    batch = model.encode(PROMPTS)
    caches = model.prefill_sharers(batch)
    keys = caches[0].layers[0].keys.clone()
    s_ids, s_mask, index = batch.sharers[0]
    rotated = rotate_sharers(batch, caches)
    r_ids, r_mask, r_index = rotated.sharers[0]
    assert torch.equal(rotated.ids, batch.ids) and torch.equal(rotated.mask, batch.mask)  # the receiver is unchanged
    for b in range(3):
        n = (b + 1) % 3
        assert torch.equal(caches[0].layers[0].keys[b], keys[n]) and torch.equal(r_ids[b], s_ids[n])
        real = batch.mask[b].bool()
        got = r_index[b][real]
        first, last = int((s_mask[n] == 0).sum()), s_ids.shape[1] - 1
        assert got.min() >= first and got.max() <= last  # only the partner's real sharer positions
        assert (got.diff() >= 0).all()  # order kept
        assert int(got[-1]) == last and int(got[0]) == first + round(
            int(index[b][real][0] - (s_mask[b] == 0).sum())
            / max(1, int(s_mask[b].sum()) - 1)
            * (int(s_mask[n].sum()) - 1)
        )


def test_one_row_has_no_other_question_to_borrow():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(r, [s], [make_fuser(r, s)])
    batch = model.encode(PROMPTS[:1])
    with pytest.raises(C2CError, match="at least two"):
        rotate_sharers(batch, model.prefill_sharers(batch))


def test_the_mismatched_mode_fuses_another_questions_cache():
    """Two copies of one question: the next row's cache says the same, so the control equals C2C exactly. Two
    different questions: it does not. Outside the block, C2C is back to normal."""
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(r, [s], [make_fuser(r, s)])
    same = [PROMPTS[0], PROMPTS[0]]
    c2c = model.next_token_logits(same)
    with model.mismatched_sharers():
        torch.testing.assert_close(model.next_token_logits(same), c2c, rtol=0, atol=1e-5)
        mismatched = model.next_token_logits(PROMPTS[:2])
    right = model.next_token_logits(PROMPTS[:2])
    assert not torch.allclose(mismatched, right, atol=1e-3)
    assert torch.equal(right, model.next_token_logits(PROMPTS[:2]))
