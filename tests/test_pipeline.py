import dataclasses
import time

import pytest
import torch

from cache2cache import C2CModel, GenerateOptions
from cache2cache.errors import C2CError

from .conftest import PAIRS, make_fuser, tiny

LONG = "a prompt long enough to overflow the eight-token sliding window of the tiny gemma model, twice over"


@pytest.mark.parametrize("receiver,sharer", PAIRS)
def test_batched_equals_one_at_a_time(receiver, sharer, prompts):
    r, s = tiny(receiver), tiny(sharer)
    model = C2CModel(r, [s], [make_fuser(r, s)])
    prompts = prompts + [LONG]
    options = GenerateOptions(max_new_tokens=6)
    for mode in ("c2c", "receiver", "sharer"):
        batched = model.next_token_logits(prompts, mode)
        alone = torch.cat([model.next_token_logits([p], mode) for p in prompts])
        torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)
        texts = [x.text for x in model.generate(prompts, mode, options).results]
        assert texts == [model.generate([p], mode, options).results[0].text for p in prompts]


def test_receiver_mode_equals_plain_generate(prompts):
    r = tiny("tiny-gemma3")
    model = C2CModel(r)
    options = GenerateOptions(max_new_tokens=8)
    for p in prompts + [LONG]:
        ids = r.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)["input_ids"]
        plain = r.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=r.tokenizer.pad_token_id)
        ours = model.generate([p], "receiver", options).results[0]
        assert ours.text == r.tokenizer.decode(plain[0, ids.shape[1]:ids.shape[1] + ours.new_tokens],
                                               skip_special_tokens=True)


def test_sliding_window_receiver_fuses_only_the_kept_positions():
    r, s = tiny("tiny-gemma3"), tiny("tiny-llama")
    model = C2CModel(r, [s], [make_fuser(r, s)])
    batch = model.encode([LONG])
    cache, _ = model.prefill(batch)
    for i, layer in enumerate(cache.layers):
        expected = 7 if r.model.config.layer_types[i] == "sliding_attention" else batch.ids.shape[1] - 1
        assert layer.keys.shape[-2] == expected


def test_several_sharers_add_their_deltas(prompts):
    """With two sharers the receiver's cache is its own plus each fuser's delta: (both - alone) equals
    (first only - alone) + (second only - alone) in every layer, and each delta is not zero."""
    r, s1, s2 = tiny("tiny-llama"), tiny("tiny-qwen2"), tiny("tiny-gemma3")
    f1, f2 = make_fuser(r, s1, seed=1), make_fuser(r, s2, seed=2)

    def keys(model: C2CModel, mode: str = "c2c") -> list[torch.Tensor]:
        cache, _ = model.prefill(model.encode(prompts, mode), mode)
        return [layer.keys for layer in cache.layers]

    both, one, two = keys(C2CModel(r, [s1, s2], [f1, f2])), keys(C2CModel(r, [s1], [f1])), keys(C2CModel(r, [s2], [f2]))
    alone = keys(C2CModel(r), "receiver")
    for b, x, y, a in zip(both, one, two, alone):
        torch.testing.assert_close(b - a, (x - a) + (y - a), rtol=1e-4, atol=1e-5)
    assert max((x - a).abs().max() for x, a in zip(one, alone)) > 1e-3
    assert max((y - a).abs().max() for y, a in zip(two, alone)) > 1e-3
    texts = C2CModel(r, [s1, s2], [f1, f2]).generate(prompts, options=GenerateOptions(max_new_tokens=4))
    assert len(texts.results) == len(prompts)


def test_sampling_is_reproducible_with_a_seed(prompts):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(r, [s], [make_fuser(r, s)])
    opts = GenerateOptions(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=50, seed=7)
    a = [x.text for x in model.generate(prompts, options=opts).results]
    b = [x.text for x in model.generate(prompts, options=opts).results]
    other = [x.text for x in model.generate(prompts, options=dataclasses.replace(opts, seed=8)).results]
    greedy = [x.text for x in model.generate(prompts, options=GenerateOptions(max_new_tokens=10)).results]
    assert a == b and a != other and a != greedy  # the seed decides the sample, and it is a sample


def test_stream_yields_the_generated_text():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(r, [s], [make_fuser(r, s)])
    opts = GenerateOptions(max_new_tokens=8)
    streamed = "".join(model.stream("What is a cache?", "c2c", opts))
    assert streamed == model.generate(["What is a cache?"], "c2c", opts).results[0].text


def test_timings_and_token_counts():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(r, [s], [make_fuser(r, s)])
    start = time.perf_counter()
    out = model.generate(["hello", "hi there"], options=GenerateOptions(5))
    wall = time.perf_counter() - start
    t = out.timings
    assert t.sharer_prefill_s > 0 and t.fuse_s > 0 and t.receiver_prefill_s > 0 and t.decode_s > 0
    assert t.total_s <= wall and t.total_s > 0.5 * wall  # the phases are disjoint parts of the call, most of it
    assert all(1 <= x.new_tokens <= 5 and x.prompt_tokens > 0 and x.sharer_prompt_tokens[0] > 0
               for x in out.results)


@pytest.mark.parametrize("bad,match", [
    ([""], "empty"), (["   \n"], "empty"), ([], "no prompts"), (["x" * 3000], "exceeds"),
    ([[{"role": "user", "content": ""}]], "empty"),
])
def test_bad_prompts_are_refused(bad, match):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    with pytest.raises(C2CError, match=match):
        C2CModel(r, [s], [make_fuser(r, s)]).generate(bad)


def test_bad_options_and_modes():
    with pytest.raises(C2CError):
        GenerateOptions(max_new_tokens=0)
    with pytest.raises(C2CError):
        GenerateOptions(temperature=0)
    with pytest.raises(C2CError, match="needs at least one sharer"):
        C2CModel(tiny("tiny-llama")).generate(["x"], "c2c")
    with pytest.raises(C2CError, match="unknown mode"):
        C2CModel(tiny("tiny-llama")).generate(["x"], "t9")
    with pytest.raises(C2CError, match="one fuser per sharer"):
        C2CModel(tiny("tiny-llama"), [tiny("tiny-qwen2")], [])


@pytest.mark.parametrize("strategy", ["first", "longest"])
def test_the_fusers_token_alignment_is_the_one_the_pipeline_uses(strategy):
    """A fuser trained with `first` or `longest` alignment is fused that way: the batch's receiver->sharer index is
    the aligner's for that strategy, and the answer differs from an `offsets` fuser with the same weights where
    the two maps differ."""
    from cache2cache.alignment.tokens import TokenAligner

    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    prompt = "Déjà vu: naïve café owners in 東京 serve crème brûlée 😀 daily"
    fuser = make_fuser(r, s, token_alignment=strategy)
    model = C2CModel(r, [s], [fuser])
    batch = model.encode([prompt])
    aligned = TokenAligner(r.tokenizer, s.tokenizer, strategy).align([{"role": "user", "content": prompt}])
    offsets = TokenAligner(r.tokenizer, s.tokenizer, "offsets").align([{"role": "user", "content": prompt}])
    assert aligned.sharer_index != offsets.sharer_index  # the prompt tells the strategies apart
    assert batch.sharers[0][2][0].tolist() == aligned.sharer_index
    same_weights = make_fuser(r, s, token_alignment="offsets")
    same_weights.load_state_dict(fuser.state_dict())
    other = C2CModel(r, [s], [same_weights]).next_token_logits([prompt])
    assert not torch.equal(model.next_token_logits([prompt]), other)
