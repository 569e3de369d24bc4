import pytest

from cache2cache.alignment.tokens import STRATEGIES, TokenAligner, encode, render
from cache2cache.errors import C2CError
from cache2cache.models.tiny import tiny_tokenizer

from .conftest import tiny

REAL_WORLD = [
    "What is the capital of France?",
    "  leading and trailing spaces   \n\n\ttabs\tand\nnewlines  ",
    "Unicode: café naïve résumé — “quotes” 東京は日本の首都です。 Привет! 😀🚀 ∑π≈3.14",
    "def f(x):\n    if x > 0:\n        return [i ** 2 for i in range(x)]  # squares\n    return {}\n",
    "<tag attr=\"1\">&amp;</tag> C:\\path\\file.txt https://example.org/a?b=c#d",
    "1234567890 + 0.000001 = ? 1e-9, 3/4, -17",
    "x",
]
FAMILIES = ["llama", "qwen2", "gemma3"]


def _messages(text):
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("r_fam,s_fam", [(a, b) for a in FAMILIES for b in FAMILIES if a != b])
def test_every_receiver_token_maps_to_a_valid_sharer_position(strategy, r_fam, s_fam):
    r, s = tiny_tokenizer(r_fam), tiny_tokenizer(s_fam)
    aligner = TokenAligner(r, s, strategy)
    assert not aligner.identity
    for text in REAL_WORLD:
        a = aligner.align(_messages(text))
        # The receiver reads exactly what it would read alone.
        assert a.receiver_ids == encode(r, render(r, _messages(text)))[0]
        assert len(a.sharer_index) == len(a.receiver_ids)
        assert all(0 <= j < len(a.sharer_ids) for j in a.sharer_index)
        assert a.sharer_index == sorted(a.sharer_index)  # never looks back: alignment is monotone
        assert a.sharer_index[-1] == len(a.sharer_ids) - 1  # both prompts end together
        if strategy == "offsets":  # the sharer reads its own natural rendering
            assert a.sharer_ids == encode(s, render(s, _messages(text)))[0]


def test_offsets_map_content_tokens_to_the_covering_sharer_token():
    r, s = tiny_tokenizer("llama"), tiny_tokenizer("qwen2")
    text = "The quick brown fox jumps over the lazy dog"
    a = TokenAligner(r, s, "offsets").align([{"role": "user", "content": text}])
    r_text, s_text = render(r, [{"role": "user", "content": text}]), render(s, [{"role": "user", "content": text}])
    _, r_spans = encode(r, r_text)
    _, s_spans = encode(s, s_text)
    shift = s_text.index(text) - r_text.index(text)
    for i, (ra, rb) in enumerate(r_spans):
        if r_text.index(text) <= ra < r_text.index(text) + len(text):
            sa, sb = s_spans[a.sharer_index[i]]
            assert sa <= rb - 1 + shift < sb  # the sharer token covers the receiver token's last character


def test_identity_fast_path():
    r = tiny("tiny-llama").tokenizer
    aligner = TokenAligner(r, tiny("tiny-llama-b").tokenizer)
    assert aligner.identity
    a = aligner.align(_messages("hello"))
    assert a.sharer_ids == a.receiver_ids and a.sharer_index == list(range(len(a.receiver_ids)))


def test_unknown_strategy_and_raw_mode():
    r, s = tiny_tokenizer("llama"), tiny_tokenizer("qwen2")
    with pytest.raises(C2CError):
        TokenAligner(r, s, "middle")
    a = TokenAligner(r, s).align([{"role": "user", "content": "raw text only"}], chat=False)
    assert r.decode(a.receiver_ids) == "raw text only"


@pytest.mark.slow
def test_real_tokenizers_smollm2_and_qwen():
    from cache2cache import load_model

    r = load_model("SmolLM2-135M-Instruct").tokenizer
    s = load_model("Qwen2.5-Coder-0.5B-Instruct").tokenizer
    for strategy in STRATEGIES:
        aligner = TokenAligner(r, s, strategy)
        for text in REAL_WORLD:
            a = aligner.align([{"role": "user", "content": text}])
            assert all(0 <= j < len(a.sharer_ids) for j in a.sharer_index)
            assert a.sharer_index == sorted(a.sharer_index)


def test_same_tokenization_compares_what_templates_render_not_their_text():
    """Two templates that render every role alike (Qwen2.5-Coder 0.5B and 1.5B differ in a tool-call branch only)
    tokenise alike; one that renders a role otherwise, another vocabulary, or no template on one side does not."""
    import copy

    from cache2cache.alignment.tokens import same_tokenization

    a = tiny("tiny-llama").tokenizer
    b = copy.deepcopy(a)
    b.chat_template = a.chat_template + "{#- a branch our prompts never take #}"
    assert a.chat_template != b.chat_template and same_tokenization(a, b)
    other = copy.deepcopy(a)
    other.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert not same_tokenization(a, other)
    none = copy.deepcopy(a)
    none.chat_template = None
    assert not same_tokenization(a, none)
    assert not same_tokenization(a, tiny("tiny-qwen2").tokenizer)
