import json

import pytest

from cache2cache.alignment.tokens import TokenAligner
from cache2cache.errors import C2CError
from cache2cache.training.data import load_conversations
from cache2cache.training.examples import build_examples, response_ids

from ..conftest import tiny


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_formats_and_skip_reasons(tmp_path):
    rows = [
        {"prompt": "p1", "response": "r1"},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a"}, {"role": "user", "content": "later"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"conversations": [{"from": "gpt", "value": "continuation"}]},
        {"messages": [{"role": "user", "content": "q"}]},
        {"prompt": "p", "response": ""},
        {"prompt": 3, "response": "x"},
        {"messages": [{"role": "wizard", "content": "x"}]},
        [1, 2],
        "{not json",
    ]
    convs, report = load_conversations(str(_write(tmp_path / "d.jsonl", rows)))
    assert [c.response for c in convs] == ["r1", "a", "hello"]
    assert convs[1].prompt == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert report.records == 10 and report.used == 3
    assert report.skipped == {"starts with an assistant turn": 1, "no assistant turn": 1, "empty response": 1,
                              "prompt/response not strings": 1, "malformed message": 1, "not an object": 1,
                              "invalid JSON line": 1}


def test_truncated_json_array_is_read_up_to_the_cut(tmp_path):
    good = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(3)]
    text = json.dumps(good)[:-1] + ', {"prompt": "cut off mid-rec'
    (tmp_path / "d.json").write_text(text)
    convs, report = load_conversations(str(tmp_path / "d.json"))
    assert len(convs) == 3 and report.records == 3


def test_bad_sources(tmp_path):
    with pytest.raises(C2CError, match="not found"):
        load_conversations(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(C2CError, match="unsupported"):
        load_conversations(str(tmp_path / "x.csv"))


def test_response_tokens_end_the_turn_and_long_prompts_are_skipped():
    aligner = TokenAligner(tiny("tiny-llama").tokenizer, tiny("tiny-qwen2").tokenizer)
    from cache2cache.training.data import Conversation

    conv = Conversation([{"role": "user", "content": "hi"}], "hello there")
    ids = response_ids(aligner, conv)
    assert aligner.receiver.decode(ids).startswith("hello there")
    assert aligner.receiver.eos_token_id in ids  # the template's end of turn is trained too
    long = Conversation([{"role": "user", "content": "word " * 300}], "ok")
    examples, skipped = build_examples(aligner, [conv, long], max_prompt_tokens=64, max_response_tokens=2)
    assert len(examples) == 1 and skipped == {"prompt too long": 1}
    assert len(examples[0].response_ids) == 2
