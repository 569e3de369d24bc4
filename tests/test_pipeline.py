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
    r, s1, s2 = tiny("tiny-llama"), tiny("tiny-qwen2"), tiny("tiny-gemma3")
    f1, f2 = make_fuser(r, s1, seed=1), make_fuser(r, s2, seed=2)
    both = C2CModel(r, [s1, s2], [f1, f2]).next_token_logits(prompts)
    one = C2CModel(r, [s1], [f1]).next_token_logits(prompts)
    alone = C2CModel(r).next_token_logits(prompts, "receiver")
    assert (both - one).abs().max() > 1e-3 and (both - alone).abs().max() > 1e-3
    texts = C2CModel(r, [s1, s2], [f1, f2]).generate(prompts, options=GenerateOptions(max_new_tokens=4))
    assert len(texts.results) == len(prompts)


def test_sampling_is_reproducible_with_a_seed(prompts):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(r, [s], [make_fuser(r, s)])
    opts = GenerateOptions(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=50, seed=7)
    a = [x.text for x in model.generate(prompts, options=opts).results]
    b = [x.text for x in model.generate(prompts, options=opts).results]
    assert a == b


def test_stream_yields_the_generated_text():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(r, [s], [make_fuser(r, s)])
    opts = GenerateOptions(max_new_tokens=8)
    streamed = "".join(model.stream("What is a cache?", "c2c", opts))
    assert streamed == model.generate(["What is a cache?"], "c2c", opts).results[0].text


def test_timings_and_token_counts():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    out = C2CModel(r, [s], [make_fuser(r, s)]).generate(["hello", "hi there"], options=GenerateOptions(5))
    t = out.timings
    assert t.sharer_prefill_s > 0 and t.fuse_s > 0 and t.receiver_prefill_s > 0 and t.decode_s > 0
    assert abs(t.total_s - (t.sharer_prefill_s + t.fuse_s + t.receiver_prefill_s + t.decode_s)) < 1e-9
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
