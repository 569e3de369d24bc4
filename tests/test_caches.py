"""PromptCache, the prefix store and warm C2C on tiny models: extension equals recomputation (sliding windows
too), files round-trip bit-exactly, a cache refuses the wrong model, stored prefixes answer like cold runs."""

import pytest
import torch

from cache2cache import C2CModel, GenerateOptions
from cache2cache.caches.batched import stack_caches
from cache2cache.caches.identity import identity_of
from cache2cache.caches.prompt_cache import PromptCache
from cache2cache.caches.store import PrefixStore
from cache2cache.errors import C2CError
from cache2cache.kv import new_cache

from .conftest import PAIRS, make_fuser, tiny

DOC = ("Caches hold the keys and values of every token a model has read. " * 6).strip()
ARCHS = ["tiny-llama", "tiny-qwen2", "tiny-gemma3"]  # tiny-gemma3 has sliding-window layers (window 8)


def _doc_messages(question: str | None = None):
    text = DOC if question is None else f"{DOC}\n\n{question}"
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("name", ARCHS)
def test_extend_equals_recompute(name):
    model = tiny(name)
    full = PromptCache.prefill(model, _doc_messages("What do caches hold?"), hidden=True)
    assert len(full) > 2 * 8  # longer than gemma's window: the sliding layers really slide
    for cut in (1, len(full) // 3, len(full) - 1):
        ext = full.truncate(cut).extend(model, full.token_ids[cut:])
        assert ext.token_ids == full.token_ids
        for a, b in zip(full.keys + full.values + full.hidden, ext.keys + ext.values + ext.hidden):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_a_cache_continues_like_the_model_own_prefill(name):
    """The transformers cache made from a PromptCache decodes exactly like one the model filled itself."""
    model = tiny(name)
    cache = PromptCache.prefill(model, _doc_messages(), drop_last=False)
    ids = torch.tensor([cache.token_ids])
    own = new_cache(model.model.config)
    ref = model.model(input_ids=ids, past_key_values=own, use_cache=True)
    nxt = ref.logits[:, -1:].argmax(-1)
    want = model.model(input_ids=nxt, past_key_values=own).logits
    got = model.model(input_ids=nxt, past_key_values=cache.to_transformers(model),
                      position_ids=torch.tensor([[len(cache)]])).logits  # fmt: skip
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_save_load_round_trip_is_bit_exact_and_sized_by_geometry(tmp_path):
    model = tiny("tiny-qwen2")
    cache = PromptCache.prefill(model, "Hello there, how are you?", hidden=True)
    cache.meta["sender"] = "reader"
    back = PromptCache.load(cache.save(tmp_path / "c.safetensors"))
    assert back.token_ids == cache.token_ids and back.messages == cache.messages and back.meta == cache.meta
    assert back.identity == cache.identity
    for a, b in zip(cache.keys + cache.values + cache.hidden, back.keys + back.values + back.hidden):
        assert torch.equal(a, b)
    geo = identity_of(model).geometry
    kv = sum(2 * g.kv_heads * g.head_dim for g in geo.layers) * 4  # float32
    hidden = geo.num_layers * model.model.config.hidden_size * 4
    assert cache.bytes_per_token() == kv + hidden
    half = PromptCache.from_bytes(cache.to_bytes(torch.bfloat16))
    assert half.dtype == torch.bfloat16 and half.nbytes == cache.nbytes // 2
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(C2CError, match="not a cache2cache cache file"):
        PromptCache.load(tmp_path / "junk.safetensors")
    with pytest.raises(C2CError, match="not found"):
        PromptCache.load(tmp_path / "missing.safetensors")


def test_a_cache_refuses_another_model():
    cache = PromptCache.prefill(tiny("tiny-llama"), "Hello")
    assert identity_of(tiny("tiny-llama")).fingerprint != identity_of(tiny("tiny-llama-b")).fingerprint
    with pytest.raises(C2CError, match="only fits the model that computed it"):
        cache.extend(tiny("tiny-llama-b"), [5, 6])  # same architecture and tokenizer, other weights
    with pytest.raises(C2CError, match="only fits"):
        cache.to_transformers(tiny("tiny-qwen2"))


def test_store_is_lru_by_bytes_and_reuses_the_longest_prefix():
    model = tiny("tiny-llama")
    a = PromptCache.prefill(model, _doc_messages("first?"))
    store = PrefixStore(max_bytes=int(a.nbytes * 2.5), min_prefix=4)
    store.put(a)
    b_ids = PromptCache.prefill(model, _doc_messages("second question?")).token_ids
    hit = store.longest_prefix(a.identity.fingerprint, b_ids)
    shared = next(i for i, (x, y) in enumerate(zip(a.token_ids, b_ids)) if x != y)
    assert hit is not None and len(hit) == shared and hit.token_ids == b_ids[:shared]
    assert store.longest_prefix("another-model", b_ids) is None
    warm = store.prefill(model, b_ids)
    assert store.stats.hits == 1 and store.stats.computed_tokens == len(b_ids) - shared
    cold = PromptCache.prefill(model, _doc_messages("second question?"))
    for x, y in zip(warm.keys, cold.keys):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    store.put(PromptCache.prefill(model, "something else entirely, quite long " * 8))
    assert store.stats.bytes <= store.max_bytes and store.stats.evictions >= 1
    assert store.longest_prefix(a.identity.fingerprint, a.token_ids) is None or store.stats.entries <= 2


def test_stacked_caches_are_left_padded_with_a_mask():
    model = tiny("tiny-llama")
    short, long = PromptCache.prefill(model, "hi"), PromptCache.prefill(model, "a much longer prompt than that")
    cache, mask = stack_caches([short, long], model)
    assert mask.tolist()[0] == [0] * (len(long) - len(short)) + [1] * len(short)
    assert torch.equal(cache.layers[0].keys[0, :, -len(short):], short.keys[0])


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{r}<-{s}" for r, s in PAIRS])
def test_warm_runs_answer_like_cold_ones(pair):
    """With a prefix store, receiver-alone answers are unchanged (no fusion involved), and C2C's fused prefix,
    reused from the store, gives the answer a cold C2C run gives."""
    receiver, sharer = tiny(pair[0]), tiny(pair[1])
    fuser = make_fuser(receiver, sharer)
    cold = C2CModel(receiver, [sharer], [fuser])
    warm = C2CModel(receiver, [sharer], [fuser], store=PrefixStore())
    opts = GenerateOptions(max_new_tokens=6)
    first, second = _doc_messages("What do caches hold?"), _doc_messages("Why keep them?")
    for mode in ("receiver", "c2c"):
        warm.generate([first], mode, opts)  # fills the store with the document's prefix
        hits = warm.store.stats.hits
        got = warm.generate([second], mode, opts).results[0].text
        assert warm.store.stats.hits > hits  # the document was reused, not recomputed
        assert got == cold.generate([second], mode, opts).results[0].text
    logits_cold = cold.next_token_logits([second], "c2c")
    logits_warm = warm.next_token_logits([second], "c2c")
    torch.testing.assert_close(logits_warm, logits_cold, rtol=1e-4, atol=1e-4)
