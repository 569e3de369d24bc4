"""Property: for arbitrary unicode text (and an optional system message), every strategy maps every receiver
token to a valid sharer position (hypothesis). The map is not always monotone: around a one-character message
a receiver token can map past the next one's sharer position (found by this test, left as is; see RESULTS)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache2cache.alignment.tokens import STRATEGIES, TokenAligner

from .conftest import tiny

PAIRS = [("tiny-llama", "tiny-qwen2"), ("tiny-llama", "tiny-gemma3"), ("tiny-gemma3", "tiny-qwen2")]
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=80)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("pair", PAIRS, ids=["-".join(p) for p in PAIRS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=text, system=st.one_of(st.none(), text))
def test_every_receiver_token_maps_to_a_valid_sharer_position(pair, strategy, user, system):
    if not user.strip():
        return  # an empty prompt is refused before alignment
    aligner = TokenAligner(tiny(pair[0]).tokenizer, tiny(pair[1]).tokenizer, strategy)
    messages = ([{"role": "system", "content": system}] if system and system.strip() else []) + \
        [{"role": "user", "content": user}]  # fmt: skip
    a = aligner.align(messages)
    assert len(a.sharer_index) == len(a.receiver_ids) > 0
    assert all(0 <= i < len(a.sharer_ids) for i in a.sharer_index)
