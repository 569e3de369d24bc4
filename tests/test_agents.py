"""The multi-agent API on tiny models: messages are caches, fused where a fuser exists, text where not."""

import logging

import pytest

from cache2cache import C2CModel, GenerateOptions
from cache2cache.agents import CacheMessage, Team
from cache2cache.caches.prompt_cache import PromptCache
from cache2cache.errors import C2CError

from .conftest import make_fuser, tiny

DOC = "The lighthouse keeper counted ships every night and wrote their names in a blue book. " * 4
OPTS = GenerateOptions(max_new_tokens=5)


def _team(*sharers):
    receiver = tiny("tiny-llama")
    fusers = [make_fuser(receiver, tiny(s), seed=i) for i, s in enumerate(sharers)]
    team = Team(fusers)
    return team, team.agent("answerer", receiver, system="Answer briefly.")


def test_a_message_is_fused_and_answers_like_c2c_on_the_joint_prompt():
    team, answerer = _team("tiny-qwen2")
    reader = team.agent("reader", tiny("tiny-qwen2"))
    note = reader.read(DOC)
    assert isinstance(note.cache, PromptCache) and note.cache.meta["sender"] == "reader"
    questions = ["Who counted ships?", "What colour was the book?"]
    replies = team.answer(answerer, questions, [note], OPTS)
    assert [r.via for r in replies] == [{"reader": "cache"}] * 2
    assert team.store.stats.hits >= 2  # the document's sharer cache was reused, not recomputed
    # the same as a cold C2C run over the joint prompt (the sender's conversation, then the question)
    cold = C2CModel(answerer.model, [reader.model], [team.fuser_for(answerer, reader)])
    expected = cold.generate([note.context + [{"role": "user", "content": q}] for q in questions], "c2c", OPTS)
    assert [r.text for r in replies] == [r.text for r in expected.results]


def test_several_sharers_fuse_into_one_receiver():
    team, answerer = _team("tiny-qwen2", "tiny-gemma3")
    a, b = team.agent("a", tiny("tiny-qwen2")), team.agent("b", tiny("tiny-gemma3"))
    replies = team.answer(answerer, ["Who?"], [a.read(DOC), b.read("Ships have names.")], OPTS)
    assert replies[0].via == {"a": "cache", "b": "cache"}
    model = team._models[("answerer", "a", "b")]
    assert [s.name for s in model.sharers] == ["tiny-qwen2", "tiny-gemma3"]


def test_no_fuser_falls_back_to_text_with_a_warning(caplog):
    team, answerer = _team()  # no fusers at all
    reader = team.agent("reader", tiny("tiny-qwen2"))
    note = reader.read(DOC)
    with caplog.at_level(logging.WARNING):
        reply = team.answer(answerer, ["Who counted ships?"], [note], OPTS)[0]
    assert reply.via == {"reader": "text"} and "passed as text" in caplog.text
    said = note.render(team, OPTS)  # what the reader would have said, for auditing
    assert said == C2CModel(reader.model).generate([note.context], "receiver", OPTS).results[0].text


def test_messages_travel_as_bytes_and_errors_are_clear(tmp_path):
    team, answerer = _team("tiny-qwen2")
    reader = team.agent("reader", tiny("tiny-qwen2"))
    note = reader.read(DOC)
    received = CacheMessage("reader", PromptCache.from_bytes(note.cache.to_bytes()))
    a = team.answer(answerer, ["Who?"], [note], OPTS)[0].text
    assert team.answer(answerer, ["Who?"], [received], OPTS)[0].text == a
    with pytest.raises(C2CError, match="not in this team"):
        team.answer(answerer, ["Who?"], [CacheMessage("stranger", note.cache)], OPTS)
    with pytest.raises(C2CError, match="already in the team"):
        team.agent("reader", tiny("tiny-qwen2"))
    with pytest.raises(C2CError, match="no questions"):
        team.answer(answerer, [], [note], OPTS)


def test_an_agent_answers_alone_with_its_role():
    team, answerer = _team()
    alone = answerer.ask(["Who?"], OPTS)[0].text
    with_role = C2CModel(answerer.model).generate([[{"role": "system", "content": "Answer briefly."},
                                                    {"role": "user", "content": "Who?"}]], "receiver", OPTS)
    assert alone == with_role.results[0].text
