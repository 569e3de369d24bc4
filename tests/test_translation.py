"""Cache translators: RoPE undone and redone exactly, briefs found in every template, moments that resume exactly,
a model translated into itself reproduces its own cache, and mode translated / its control / the upper bound run
through the pipeline, the answerers and evaluation."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cache2cache import C2CModel
from cache2cache.alignment.tokens import encode, render, with_brief
from cache2cache.caches.prompt_cache import PromptCache
from cache2cache.errors import C2CError
from cache2cache.evaluation.runner import EvalConfig, Evaluator, summarise
from cache2cache.evaluation.tasks import load_jsonl_task
from cache2cache.inference.answerers import NEUTRAL_BRIEF, Question, TranslatedMismatched, answerer
from cache2cache.inference.batching import Briefed, GenerateOptions, to_messages
from cache2cache.kv import ModelGeometry
from cache2cache.translation.config import FEATURES, windows
from cache2cache.translation.features import BriefSpan, align_spans, rotary, rotate, unrotate
from cache2cache.translation.fit import _indices, accumulate, full_config, layout_of, passage_pair, solve
from cache2cache.translation.moments import FitState
from cache2cache.translation.reading import prerope_kv, translate_brief
from cache2cache.translation.recompute import Recompute
from cache2cache.translation.text import parse_text_spec, passages
from cache2cache.translation.translator import Translator, gather_features

from .conftest import make_fuser, tiny

TEXTS = [("t", f"Passage {i}: the {w} fox near gate {i * 7} reads a cache of keys and values, then rests.")
         for i, w in enumerate(["quick", "slow", "red", "grey", "small", "large", "old", "young"] * 4)]  # fmt: skip
QUESTION = [{"role": "user", "content": "Question: Which gate?\nAnswer:"}]


@pytest.fixture(scope="module")
def self_translator(tmp_path_factory) -> Translator:
    """tiny-llama translated into itself (one layer window): must reproduce its own cache."""
    m = tiny("tiny-llama")
    state = accumulate(m, m, TEXTS, tmp_path_factory.mktemp("fit") / "s.safetensors", width=1)
    return solve(state, ["keys", "values"], ["keys", "values"], progress=False)


@pytest.fixture(scope="module")
def cross_translator(tmp_path_factory) -> Translator:
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    return solve(accumulate(r, s, TEXTS, tmp_path_factory.mktemp("fit") / "s.safetensors"), progress=False)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_prerope_keys_rotate_back_to_the_cache_keys(name):
    m = tiny(name)
    ids = encode(m.tokenizer, "the quick brown fox jumps over the lazy dog " * 3)[0]
    keys, _ = prerope_kv(m, ids)
    ref = PromptCache.empty(m).extend(m, ids)
    pos = torch.arange(len(ids))
    for i, k in enumerate(keys):
        h, _, d = ref.keys[i].shape
        pre = k.view(len(ids), h, d).transpose(0, 1)
        cos, sin = rotary(m, i, pos)
        torch.testing.assert_close(rotate(pre, cos, sin), ref.keys[i].float(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(unrotate(rotate(pre, cos, sin), cos, sin), pre, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_brief_span_covers_the_brief_in_each_template_and_matches_the_receiver_reading_it(name):
    m = tiny(name)
    brief = "Gate 42 is green; café 東京."
    span = BriefSpan.of(m, QUESTION, brief)
    full = encode(m.tokenizer, render(m.tokenizer, with_brief(QUESTION, brief)))[0]
    assert span.ids == full  # the same tokens the receiver reads when it reads the brief itself
    assert m.tokenizer.decode(span.brief_ids).strip().startswith("Gate") and "42" in m.tokenizer.decode(span.brief_ids)
    assert span.spans[0][0] == 0 and span.spans[-1][1] == len(brief)
    with pytest.raises(C2CError, match="empty"):
        BriefSpan.of(m, QUESTION, "  ")


def test_align_spans_picks_the_token_covering_the_last_character():
    assert align_spans([(0, 3), (3, 5), (5, 9)], [(0, 2), (2, 6), (6, 9)]) == [1, 1, 2]


def test_windows_stay_in_range_and_follow_depth():
    w = windows(30, 28, 3)
    assert w[0] == [0, 1, 2] and w[-1] == [25, 26, 27] and all(len(x) == 3 for x in w)
    assert windows(4, 2, 3) == [[0, 1]] * 4


def test_translating_a_model_into_itself_reproduces_its_cache(self_translator):
    m = tiny("tiny-llama")
    r2 = self_translator.config.fit["r2"]
    assert min(min(x) for x in r2) > 0.999
    brief = TEXTS[3][1]
    cache, span = translate_brief(self_translator, m, m, QUESTION, brief)
    own = PromptCache.empty(m).extend(m, span.ids[:span.end])
    assert cache.token_ids == own.token_ids and cache.identity == own.identity
    for a, b in zip(cache.keys + cache.values, own.keys + own.values):
        assert (a - b).abs().max() < 0.05 * b.abs().max()


def test_a_resumed_fit_equals_one_pass(tmp_path):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    one = accumulate(r, s, TEXTS[:12], tmp_path / "one.safetensors")
    accumulate(r, s, TEXTS[:5], tmp_path / "two.safetensors")
    two = accumulate(r, s, TEXTS[:12], tmp_path / "two.safetensors")  # continues at passage 5
    assert two.done == one.done == 12 and two.tokens == one.tokens
    for a, b in zip(one.fit + one.held, two.fit + two.held):
        torch.testing.assert_close(a.xx, b.xx)
        torch.testing.assert_close(a.xy, b.xy)
    assert FitState.load(tmp_path / "two.safetensors").sources == {"t": 12}
    with pytest.raises(C2CError, match="other models, another layer window"):
        accumulate(r, s, TEXTS[:12], tmp_path / "two.safetensors", width=1)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(C2CError, match="corrupt fitting statistics"):
        accumulate(r, s, TEXTS[:2], tmp_path / "bad.safetensors")


def test_feature_subsets_solve_from_the_same_moments(cross_translator, tmp_path):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    state = accumulate(r, s, TEXTS, tmp_path / "s.safetensors")
    small = solve(state, ["keys"], ["values"], progress=False)
    assert small.num_parameters() < cross_translator.num_parameters()
    assert small.keys[0].in_features == sum(s_geo.kv_dim for s_geo in [small.config.sharer_geo.layers[j]
                                                                      for j in small.config.windows[0]])  # fmt: skip
    fit = cross_translator.config.fit
    assert fit["tokens"] == state.tokens and len(fit["r2"]) == len(fit["ridge"]) == 4  # tiny-llama's layers


def test_every_feature_subset_reads_its_own_columns_of_the_full_moments():
    """The sub-block a solve takes (fit._indices) holds exactly the features a translator gathers at use time,
    "previous" included: the receiver's embedding one token back, zeros for the message's first token."""
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    pair = passage_pair(r, s, TEXTS[0][1])
    full = full_config(layout_of(r, s, 3))
    every = gather_features(list(FEATURES), full.windows[1], pair.s_keys, pair.s_values, pair.embedding)
    for feats in (["keys"], ["values", "embedding"], ["previous"], ["keys", "previous"], list(FEATURES)):
        own = gather_features(feats, full.windows[1], pair.s_keys, pair.s_values, pair.embedding)
        torch.testing.assert_close(every[:, _indices(full, 1, feats, full.windows[1])], own)
    prev = gather_features(["previous"], [0], pair.s_keys, pair.s_values, pair.embedding)
    assert prev[0].abs().sum() == 0 and torch.equal(prev[1:], pair.embedding[:-1].float())


def test_save_load_round_trip_and_refusals(cross_translator, tmp_path):
    path = cross_translator.save_pretrained(tmp_path / "tr")
    loaded = Translator.from_pretrained(path)
    for a, b in zip(cross_translator.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    C2CModel(r, [s], [make_fuser(r, s)], translators=[loaded])  # the right pair: accepted
    with pytest.raises(C2CError, match="fitted for"):
        C2CModel(r, [tiny("tiny-gemma3")], [make_fuser(r, tiny("tiny-gemma3"))], translators=[loaded])
    make_fuser(r, s).save_pretrained(tmp_path / "fuser")
    with pytest.raises(C2CError, match="is a fuser, not a translator"):
        Translator.from_pretrained(tmp_path / "fuser")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    with pytest.raises(C2CError, match="is not a translator"):
        Translator.from_pretrained(tmp_path / "other")
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(C2CError, match="corrupt translator weights"):
        Translator.from_pretrained(path)
    with pytest.raises(C2CError, match="not found"):
        Translator.from_pretrained(tmp_path / "missing")


def test_a_translator_shipped_for_a_pair_serves_that_pair_unasked(cross_translator, tmp_path, monkeypatch):
    import argparse

    from cache2cache.cli.common import translator_names
    from cache2cache.translation import translator as module

    args = lambda receiver, sharers, given=(): argparse.Namespace(receiver=receiver, sharer=sharers,  # noqa: E731
                                                                  fuser=[], translator=list(given))  # fmt: skip
    default = translator_names(args(None, None))  # the default pair: the translator shipped in the package
    assert default == [module.SHIPPED / "smollm2-135m-from-qwen2.5-coder-1.5b"]
    cross_translator.save_pretrained(tmp_path / "tiny-llama-from-tiny-qwen2")
    monkeypatch.setattr(module, "SHIPPED", tmp_path)
    shipped = [tmp_path / "tiny-llama-from-tiny-qwen2"]
    assert translator_names(args("tiny-llama", ["tiny-qwen2"])) == shipped
    assert translator_names(args("tiny-llama", ["tiny-qwen2", "tiny-gemma3"])) == shipped  # for the first sharer
    assert translator_names(args("tiny-llama", ["tiny-gemma3"])) == []  # another sharer: none shipped
    assert translator_names(args("tiny-qwen2", ["tiny-llama"])) == []  # the pair reversed: none
    assert translator_names(args("tiny-llama", [])) == []
    assert translator_names(args("tiny-llama", ["tiny-qwen2"], [tmp_path / "mine"])) == [tmp_path / "mine"]


def test_translated_mode_batches_like_single_rows_and_self_translation_matches_reading(self_translator):
    m = tiny("tiny-llama")
    model = C2CModel(m, [m], [make_fuser(m, m)], translators=[self_translator])
    qs = [Briefed("Which gate?", TEXTS[1][1]), Briefed("What rests, and where does it rest?", TEXTS[2][1]),
          Briefed("Hi", TEXTS[9][1]), "No brief at all"]  # fmt: skip
    opts = [[" gate", " fox"]] * len(qs)
    batch = answerer(model, "translated").logprobs(qs, opts).values
    alone = [answerer(model, "translated").logprobs([q], opts[:1]).values[0] for q in qs]
    upper = answerer(model, "receiver_brief").logprobs(qs, opts).values
    receiver = answerer(model, "receiver").logprobs(qs[3:], opts[:1]).values
    for a, b, c in zip(batch, alone, upper):
        assert a == pytest.approx(b, abs=1e-3) and a == pytest.approx(c, abs=0.05)
    assert batch[3] == pytest.approx(receiver[0], abs=1e-3)  # no brief: the receiver alone
    control = answerer(model, "translated_mismatched").logprobs(qs[:3], opts[:3]).values
    assert control[0] == pytest.approx(answerer(model, "translated").logprobs(
        [Briefed("Which gate?", TEXTS[2][1])], opts[:1]).values[0], abs=1e-3)  # fmt: skip
    texts = answerer(model, "translated").generate(qs, GenerateOptions(6)).results
    ref = answerer(model, "receiver_brief").generate(qs, GenerateOptions(6)).results
    assert [t.text for t in texts] == [t.text for t in ref]


def test_own_layers_turn_a_translated_brief_into_the_receiver_reading_it_itself(cross_translator):
    """The fidelity knob: with all its layers its own, the receiver's translated brief *is* its reading of it; with
    m, the first m layers are exactly its own (computed running only those) and the rest as translated."""
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    n = r.model.config.num_hidden_layers
    qs, opts = [Briefed("Which gate?", TEXTS[1][1]), Briefed("Hi", TEXTS[9][1])], [[" gate", " fox"]] * 2
    by = {m: C2CModel(r, [s], [make_fuser(r, s)], translators=[cross_translator], recompute=Recompute(m))
          for m in (0, 2, n)}  # fmt: skip
    full = answerer(by[n], "translated").logprobs(qs, opts).values
    upper = answerer(by[0], "receiver_brief").logprobs(qs, opts).values
    assert all(a == pytest.approx(b, abs=1e-4) for a, b in zip(full, upper))
    head = {m: model.heads.head(to_messages(QUESTION), TEXTS[1][1]) for m, model in by.items()}
    own = PromptCache.empty(r).extend(r, head[0].token_ids)
    for i in range(n):
        mixed, mine = (head[2].keys[i], own.keys[i]) if i < 2 else (head[2].keys[i], head[0].keys[i])
        torch.testing.assert_close(mixed, mine)
    assert head[2].meta["own_layers"] == 2 and by[2].heads.space() != by[0].heads.space()
    with pytest.raises(C2CError, match="own layers must be 0-"):
        C2CModel(r, [s], [make_fuser(r, s)], translators=[cross_translator], recompute=Recompute(n + 1))


def test_translated_modes_need_a_translator_and_a_batch_for_the_control(self_translator):
    m = tiny("tiny-llama")
    bare = C2CModel(m, [m], [make_fuser(m, m)])
    with pytest.raises(C2CError, match="translator"):
        answerer(bare, "translated")
    model = C2CModel(m, [m], [make_fuser(m, m)], translators=[self_translator])
    with pytest.raises(C2CError, match="two questions"):
        answerer(model, "translated_mismatched").logprobs([Briefed("q", "b b b")], [[" a"]])
    with pytest.raises(C2CError, match="batch_size"):
        EvalConfig("t", "all", ["translated_mismatched"], batch_size=1)
    # several questions about one brief never pass each other that brief: each gets the next *other* brief
    a, b = TEXTS[1][1], TEXTS[2][1]
    qs = [Question(Briefed("q1", a)), Question(Briefed("q2", a)), Question(Briefed("q3", b))]
    got = TranslatedMismatched(model).prepare(qs)[0]
    assert [p.brief for p in got] == [b, b, a]
    with pytest.raises(C2CError, match="two different briefs"):
        TranslatedMismatched(model).prepare(qs[:2])


def test_the_neutral_control_and_the_same_message_as_text(self_translator):
    """neutral: every question gets the same neutral passage, translated, in its brief's place. t2t_blind: the
    sharer reads only the brief (never the question) and writes notes; the receiver reads them where the brief
    would be."""
    m = tiny("tiny-llama")
    model = C2CModel(m, [m], [make_fuser(m, m)], translators=[self_translator])
    qs = [Briefed("Which gate?", TEXTS[1][1]), Briefed("What rests?", TEXTS[2][1])]
    opts = [[" gate", " fox"]] * 2
    neutral = answerer(model, "neutral").logprobs(qs, opts).values
    direct = answerer(model, "translated").logprobs([Briefed(q.prompt, NEUTRAL_BRIEF) for q in qs], opts).values
    assert neutral == direct and neutral != answerer(model, "translated").logprobs(qs, opts).values
    blind = answerer(model, "t2t_blind", note_tokens=4, exact_notes=True)
    asked = [blind.request(Question(q)) for q in qs]
    assert all(q.brief in a[0]["content"] and q.prompt not in a[0]["content"] for q, a in zip(qs, asked))
    prompts, notes, cost = blind.prepare([Question(q) for q in qs])
    written = model.generate(asked, "sharer", GenerateOptions(4, min_new_tokens=4)).results
    assert notes == [w.text for w in written] and cost.total_s > 0
    assert prompts == [with_brief([{"role": "user", "content": q.prompt}], n) for q, n in zip(qs, notes)]
    out = blind.generate(qs, GenerateOptions(3))
    assert out.mode == "t2t_blind" and out.timings.t2t_sharer_s > 0 and [r.notes for r in out.results] == notes
    alone = answerer(model, "receiver").logprobs(["no brief"], [[" a"]]).values  # no brief, no message
    assert blind.prepare([Question("no brief")])[:2] == (["no brief"], [None])
    assert answerer(model, "neutral").logprobs(["no brief"], [[" a"]]).values == alone


def test_eval_runs_the_translated_modes_on_a_jsonl_task_with_briefs(cross_translator, tmp_path):
    rows = [{"id": f"q{i}", "question": f"Which gate is number {i}?", "choices": [str(i * 7), str(i * 7 + 1)],
             "answer": 0, "brief": TEXTS[i][1]} for i in range(5)]  # fmt: skip
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(r, [s], [make_fuser(r, s)], translators=[cross_translator])
    modes = ["receiver", "translated", "translated_mismatched", "receiver_brief", "t2t_blind", "c2c"]
    cfg = EvalConfig(f"jsonl:{path}", "all", modes, method="cloze", batch_size=2, t2t_tokens=4)
    records = Evaluator(model, cfg).run(load_jsonl_task(path))
    assert sorted({x["mode"] for x in records}) == sorted(modes) and len(records) == 30
    # What crossed: nothing for the receiver alone; the brief's receiver tokens x every layer's K and V (float32)
    # for its translated cache; the brief's or the notes' UTF-8 for the text arms; the sharer's cache for c2c.
    per_token = sum(2 * g.kv_dim for g in ModelGeometry.from_config(r.model.config).layers) * 4
    sent = {(x["mode"], x["id"]): x["wire_bytes"] for x in records}
    notes = {x["id"]: x["notes"] for x in records if x["mode"] == "t2t_blind"}
    for i, row in enumerate(rows):
        tokens = len(r.tokenizer(row["brief"], add_special_tokens=False)["input_ids"])
        key = f"q{i}"
        assert sent["receiver", key] == 0 and sent["translated", key] == tokens * per_token
        assert sent["receiver_brief", key] == len(row["brief"].encode()) and sent["c2c", key] > 0
        assert sent["t2t_blind", key] == len(notes[key].encode()) > 0
    summary = summarise(records, cfg, {})
    assert summary["modes"]["translated"]["wire_bytes_mean"] > summary["modes"]["receiver_brief"]["wire_bytes_mean"]


def test_text_sources_are_checked_and_never_evaluation_data(tmp_path):
    with pytest.raises(C2CError, match="held-out evaluation data"):
        parse_text_spec("squad_passages.txt")
    with pytest.raises(C2CError, match="unknown text source"):
        parse_text_spec("nope")
    with pytest.raises(C2CError, match="passage count"):
        parse_text_spec("sciq:x")
    f = tmp_path / "notes.txt"
    f.write_text("First passage, long enough to be read as one passage.\n\n"
                 "Second passage, also long enough to be kept here.")
    j = tmp_path / "notes.jsonl"
    j.write_text('{"text": "A JSON passage that is long enough to be kept by the reader."}\n')
    got = passages(f"{f},{j}")
    assert [src for src, _ in got] == [str(f), str(j), str(f)]
    j.write_text("not json\n")
    with pytest.raises(C2CError, match="JSON object"):
        passages(str(j))


def test_cli_fit_then_generate_translated(tmp_path):
    out = tmp_path / "tr"
    texts = tmp_path / "passages.txt"
    texts.write_text("\n\n".join(t for _, t in TEXTS))
    cmd = [sys.executable, "-m", "cache2cache.cli.main"]
    fit = ["fit", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--text", str(texts), "--out", str(out),
           "--refine-values", "--refine-steps", "25", "--distill", "10", "--json"]
    run = subprocess.run(cmd + fit, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["parameters"] > 0 and (out / "r2.png").is_file() and (out / "fit.json").is_file()
    refined = report["refined_keys"]  # on the passages kept as the moments read them (every one but the first)
    assert refined["passages"] + refined["held_out"] == len(TEXTS) - 1
    assert report["refined_values"]["steps"] == 25 and "value maps refined" in (out / "README.md").read_text()
    assert report["distilled"]["steps"] == 10 and "distilled end to end" in (out / "README.md").read_text()
    brief = tmp_path / "brief.txt"
    brief.write_text(TEXTS[0][1])
    run = subprocess.run(
        cmd
        + [
            "generate",
            "--receiver",
            "tiny-llama",
            "--sharer",
            "tiny-qwen2",
            "--translator",
            str(out),
            "--brief-file",
            str(brief),
            "--prompt",
            "Which gate?",
            "--mode",
            "translated",
            "--max-new-tokens",
            "4",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)  # which translator answered, under which knob
    assert shown["outputs"][0]["mode"] == "translated" and shown["translators"] == [str(out)]
    assert shown["recompute"]["own_from"] == 0 and not shown["recompute"].get("own_tokens")
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps({"question": f"Which gate is number {i}?", "choices": ["7", "14"], "answer": 0,
                                        "brief": TEXTS[i][1]}) + "\n" for i in range(3)))  # fmt: skip
    modes = "receiver,translated,translated_mismatched,receiver_brief"
    run = subprocess.run(cmd + ["eval", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--translator", str(out),
                                "--task", f"jsonl:{task}", "--split", "all", "--method", "cloze", "--modes", modes,
                                "--out", str(tmp_path / "eval"), "--json"], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert list(json.loads(run.stdout)["modes"]) == modes.split(",")
    bad = subprocess.run(cmd + ["fit", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--text", "mmlu"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "held-out" in bad.stderr and "Traceback" not in bad.stderr


def test_a_note_to_an_answerer_with_a_translator_is_translated_once_and_follow_ups_reuse_it(cross_translator):
    from cache2cache.agents import Team

    team = Team(translators=[cross_translator])
    answerer = team.agent("answerer", tiny("tiny-llama"))
    reader = team.agent("reader", tiny("tiny-qwen2"))
    note = reader.read(TEXTS[4][1])
    opts = GenerateOptions(max_new_tokens=4)
    first = team.answer(answerer, ["Which gate?"], [note], opts)
    assert first[0].via == {"reader": "translated"}
    computed = team.store.stats.computed_tokens
    hits = team.store.stats.hits
    again = team.answer(answerer, ["Which gate?"], [note], opts)
    assert again[0].text == first[0].text
    assert team.store.stats.hits == hits + 1  # the translated document came from the store
    assert team.store.stats.computed_tokens == computed  # the sharer did not read it again
    direct = C2CModel(answerer.model, [reader.model], [], translators=[cross_translator])
    ref = direct.generate([Briefed("Which gate?", TEXTS[4][1])], "translated", opts)
    assert ref.results[0].text == first[0].text
    with pytest.raises(C2CError, match="needs a fuser"):
        direct.generate(["hi"], "c2c", opts)


def test_two_senders_parts_land_in_one_cache_each_as_translated_alone(self_translator):
    from cache2cache.translation.reading import translate_parts

    m = tiny("tiny-llama")
    a, b = TEXTS[1][1], TEXTS[6][1]
    both, span = translate_parts([(self_translator, m), (self_translator, m)], m, QUESTION, [a, b])
    assert span.ids == BriefSpan.of(m, QUESTION, a + "\n\n" + b).ids and len(both) == span.end
    first, s1 = translate_brief(self_translator, m, m, QUESTION, a)
    second, s2 = translate_brief(self_translator, m, m, QUESTION, b)
    n1 = s1.end - s1.start - 1  # part a's tokens but the last (it may merge with the separator)
    for i in range(len(both.keys)):  # part a: what one sender's translation of it writes, at the same positions
        torch.testing.assert_close(both.keys[i][:, : s1.start + n1], first.keys[i][:, : s1.start + n1])
        torch.testing.assert_close(both.values[i][:, : s1.start + n1], first.values[i][:, : s1.start + n1])
    n2 = s2.end - s2.start - 1  # part b's tokens but the first: the same values, keys at later positions
    for i in range(len(both.values)):
        torch.testing.assert_close(both.values[i][:, span.end - n2 :], second.values[i][:, s2.end - n2 :])
        assert not torch.allclose(both.keys[i][:, span.end - n2 :], second.keys[i][:, s2.end - n2 :])
    with pytest.raises(C2CError, match="one non-empty brief part per sender"):
        translate_parts([(self_translator, m)], m, QUESTION, [a, b])


def test_a_team_translates_two_senders_notes_into_one_receiver_cache(cross_translator, tmp_path):
    from cache2cache.agents import Team

    r, q2, g3 = tiny("tiny-llama"), tiny("tiny-qwen2"), tiny("tiny-gemma3")
    from_gemma = solve(accumulate(r, g3, TEXTS, tmp_path / "g.safetensors"), progress=False)
    team = Team(translators=[cross_translator, from_gemma])
    agent = team.agent("answerer", r)
    notes = [team.agent("reader", q2).read(TEXTS[2][1]), team.agent("clerk", g3).read(TEXTS[5][1])]
    opts = GenerateOptions(max_new_tokens=4)
    replies = team.answer(agent, ["Which gate?", "Which fox?"], notes, opts)
    assert replies[0].via == {"reader": "translated", "clerk": "translated"}
    direct = C2CModel(r, [q2, g3], [], translators=[cross_translator, from_gemma])
    prompts = [Briefed.of_parts(q, [TEXTS[2][1], TEXTS[5][1]]) for q in ("Which gate?", "Which fox?")]
    want = direct.generate(prompts, "translated", opts).results
    assert [x.text for x in replies] == [x.text for x in want]
    head = direct.heads.head(to_messages("Which gate?"), prompts[0].brief, prompts[0].parts)
    assert head.meta["translated_from"] == "tiny-qwen2,tiny-gemma3" and head.meta["translator"].count(",") == 1
    # the control hands each question the other's parts, whole
    pairs = [("Which gate?", [TEXTS[2][1], TEXTS[5][1]]), ("Which fox?", [TEXTS[3][1], TEXTS[7][1]])]
    opts2 = [[" gate", " fox"]] * 2
    control = answerer(direct, "translated_mismatched").logprobs([Briefed.of_parts(q, p) for q, p in pairs],
                                                                  opts2).values  # fmt: skip
    swapped = [Briefed.of_parts(q, p) for (q, _), (_, p) in zip(pairs, pairs[::-1])]
    expected = answerer(direct, "translated").logprobs(swapped, opts2).values
    for got, want_row in zip(control, expected):
        assert got == pytest.approx(want_row, abs=1e-3)
    with pytest.raises(C2CError, match="needs a translator per part"):
        C2CModel(r, [q2], [], translators=[cross_translator]).generate(prompts[:1], "translated", opts)


def test_a_recipe_file_and_start_from_a_saved_translator(tmp_path):
    """`c2c fit --recipe` reads every step from TOML (flags win), and `--from` refines and distils a saved
    translator without fitting one; the refinement's passages can come from a text of their own."""
    texts = tmp_path / "passages.txt"
    texts.write_text("\n\n".join(t for _, t in TEXTS))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'receiver = "tiny-llama"\nsharer = "tiny-qwen2"\ntext = "{texts}"\nrefine = 4\n'
        f'refine_text = "{texts}"\nrefine_skip = 1\nrefine_steps = 5\ndistill = 3\ndtype = "bfloat16"\n'
    )
    cmd = [sys.executable, "-m", "cache2cache.cli.main", "fit"]
    run = subprocess.run(cmd + ["--recipe", str(recipe), "--refine-steps", "6", "--out", str(tmp_path / "a"),
                                "--json"], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["refined_keys"]["steps"] == 6 and report["distilled"]["steps"] == 3  # the flag won
    assert report["refined_keys"]["passages"] + report["refined_keys"]["held_out"] == 4
    assert "from the 1th on" in report["refined_keys"]["text"]
    fitted = Translator.from_pretrained(tmp_path / "a")
    run = subprocess.run(cmd + ["--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--from", str(tmp_path / "a"),
                                "--text", str(texts), "--refine", "3", "--distill", "2", "--out", str(tmp_path / "b"),
                                "--json"], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    continued = Translator.from_pretrained(tmp_path / "b")
    assert continued.config.fit["r2"] == fitted.config.fit["r2"]  # no new ridge fit
    assert continued.config.fit["distilled"]["steps"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(continued.state_dict().values(), fitted.state_dict().values()))
    for body, message in (("colour = 3\n", "unknown key"), ("refine = \"many\"\n", "refine must be of type int"),
                          ("dtype = \"float8\"\n", "dtype must be one of")):  # fmt: skip
        recipe.write_text(body)
        run = subprocess.run(cmd + ["--recipe", str(recipe)], capture_output=True, text=True)
        assert run.returncode != 0 and message in run.stderr and "Traceback" not in run.stderr
    make_fuser(tiny("tiny-llama"), tiny("tiny-qwen2")).save_pretrained(tmp_path / "fuser")
    run = subprocess.run(cmd + ["--from", str(tmp_path / "fuser")], capture_output=True, text=True)
    assert run.returncode != 0 and "is a fuser, not a translator" in run.stderr and "Traceback" not in run.stderr


def test_a_narrower_window_solved_from_wide_moments_equals_one_fitted_narrow(tmp_path):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    wide = solve(accumulate(r, s, TEXTS, tmp_path / "w.safetensors", width=3), ["keys", "embedding"], ["values"],
                 progress=False, width=1)  # fmt: skip
    narrow = solve(accumulate(r, s, TEXTS, tmp_path / "n.safetensors", width=1), ["keys", "embedding"], ["values"],
                   progress=False)  # fmt: skip
    assert wide.config.windows == narrow.config.windows
    for a, b in zip(wide.state_dict().values(), narrow.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_with_a_store_the_sharer_reads_a_brief_once_for_every_translator(cross_translator, tmp_path):
    from cache2cache.caches.store import PrefixStore

    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    store = PrefixStore()
    other = solve(accumulate(r, s, TEXTS[:10], tmp_path / "o.safetensors"), progress=False)
    q = [Briefed("Which gate?", TEXTS[6][1]), Briefed("Which fox?", TEXTS[7][1])]
    first = C2CModel(r, [s], [], store=store, translators=[cross_translator]).generate(q, "translated")
    computed = store.stats.computed_tokens
    second = C2CModel(r, [s], [], store=store, translators=[other]).generate(q, "translated")
    assert store.stats.computed_tokens == computed  # the sharer's readings came from the store
    cold = C2CModel(r, [s], [], translators=[other]).generate(q, "translated")
    assert [x.text for x in second.results] == [x.text for x in cold.results]
    assert first.results[0].text is not None


def test_the_server_answers_translated_requests_with_a_brief(cross_translator):
    import httpx

    from cache2cache.serving.app import create_app, start_in_thread
    from cache2cache.serving.server import ServeConfig

    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    running = start_in_thread(create_app(C2CModel(r, [s], [make_fuser(r, s)], translators=[cross_translator]),
                                         ServeConfig(max_tokens=16)))  # fmt: skip
    try:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
            assert "translated" in ids and "translated/tiny-qwen2" in ids
            body = {"model": "translated", "messages": QUESTION, "brief": TEXTS[5][1], "max_tokens": 5,
                    "temperature": 0}  # fmt: skip
            got = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
            want = C2CModel(r, [s], [], translators=[cross_translator]).generate(
                [Briefed(QUESTION, TEXTS[5][1])], "translated", GenerateOptions(5)).results[0].text  # fmt: skip
            assert got == want
            missing = http.post("/v1/chat/completions", json={**body, "brief": " "})
            assert missing.status_code == 400 and "brief" in missing.json()["error"]["message"]
            c2c = http.post("/v1/chat/completions", json={**body, "model": "c2c"})  # the sharer reads the brief
            assert c2c.status_code == 200
    finally:
        running.stop()


def test_refining_keys_lowers_the_attention_kl_on_held_out_passages_and_survives_a_round_trip(tmp_path):
    from cache2cache.translation.refine import load_pairs, record, refine_keys, refine_values, save_pairs

    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    t = solve(accumulate(r, s, TEXTS[:16], tmp_path / "s.safetensors"), progress=False)
    pairs = record(r, s, TEXTS[16:])
    save_pairs(pairs, tmp_path / "pairs.safetensors")
    back = load_pairs(tmp_path / "pairs.safetensors")
    assert len(back) == len(pairs) and torch.equal(back[3].r_queries[1], pairs[3].r_queries[1])
    before = [w.clone() for w in t.keys.parameters()]
    report = refine_keys(t, r, back[4:], back[:4], steps=30)
    assert all(after <= first + 1e-9 for first, after in report)  # the best held-out step is kept
    assert sum(first - after for first, after in report) > 0  # and some layer improved
    assert any(not torch.equal(a, b) for a, b in zip(before, t.keys.parameters()))
    t.save_pretrained(tmp_path / "refined")
    loaded = Translator.from_pretrained(tmp_path / "refined")
    assert loaded.config.fit["refined_keys"]["steps"] == 30
    torch.testing.assert_close(loaded.keys[1].weight, t.keys[1].weight)
    # then the values, against the attention output the receiver reads through the refined keys
    values_before = [w.clone() for w in t.values.parameters()]
    report = refine_values(t, r, back[4:], back[:4], steps=30)
    assert all(after <= first + 1e-9 for first, after in report) and sum(a - b for a, b in report) > 0
    assert any(not torch.equal(a, b) for a, b in zip(values_before, t.values.parameters()))
    assert t.config.fit["refined_values"]["error_held_out"] == report


def test_the_output_error_is_zero_for_a_translator_that_reproduces_the_receiver(self_translator):
    from cache2cache.translation.refine import layer_info, layer_output_error, record

    m = tiny("tiny-llama")
    pair = record(m, m, TEXTS[:1])[0]
    for r in range(len(self_translator.values)):
        lin = self_translator.values[r]
        exact = layer_output_error(self_translator, r, pair, layer_info(m, r), m, lin.weight, lin.bias)
        assert float(exact) < 1e-3  # keys and values both reproduced: the same attention output
        off = layer_output_error(self_translator, r, pair, layer_info(m, r), m, lin.weight * 0.5, lin.bias)
        assert float(off) > 10 * float(exact)


def test_value_maps_can_read_a_narrower_window_than_key_maps(tmp_path):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    state = accumulate(r, s, TEXTS, tmp_path / "w.safetensors", width=3)
    mixed = solve(state, ["keys", "embedding"], ["values", "embedding"], progress=False, value_width=1)
    narrow = solve(state, ["keys", "embedding"], ["values", "embedding"], progress=False, width=1)
    wide = solve(state, ["keys", "embedding"], ["values", "embedding"], progress=False)
    assert mixed.config.value_windows == narrow.config.windows and mixed.config.windows == wide.config.windows
    for a, b in zip(mixed.values.parameters(), narrow.values.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(mixed.keys.parameters(), wide.keys.parameters()):
        torch.testing.assert_close(a, b)
    mixed.save_pretrained(tmp_path / "m")
    again = Translator.from_pretrained(tmp_path / "m")
    assert again.config.value_windows == mixed.config.value_windows
    cache, _ = translate_brief(again, r, s, QUESTION, TEXTS[2][1])
    assert len(cache) > 0


def test_a_translator_that_reproduces_the_receiver_reads_on_as_the_receiver_does(self_translator):
    """The student (template + translated passage up to a cut, the rest read by the receiver) equals the teacher
    (the receiver reading everything) when the translation is exact, and not when it is off."""
    from cache2cache.translation.distill import cut_of, distill_loss, student_logits, teacher_logprobs
    from cache2cache.translation.refine import record

    m = tiny("tiny-llama")
    pair = record(m, m, TEXTS[:1])[0]
    assert pair.ids[: pair.start + len(pair.embedding)] == pair.ids[: len(pair.r_keys[0])]
    for fraction in (0.3, 0.7, 1.0):
        cut = cut_of(pair, fraction)
        student = student_logits(self_translator, m, pair, cut).float().log_softmax(-1)
        torch.testing.assert_close(student, teacher_logprobs(m, pair, cut), atol=2e-2, rtol=0)  # ridge: near-exact
        assert float(distill_loss(self_translator, m, pair, cut)) < 1e-4
    broken = Translator(self_translator.config)
    assert float(distill_loss(broken, m, pair, cut_of(pair, 0.5))) > 1e-3


def test_distilling_lowers_the_held_out_kl_and_is_kept_in_the_fit_report(tmp_path):
    from cache2cache.translation.distill import distill
    from cache2cache.translation.refine import load_pairs, record, save_pairs

    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    t = solve(accumulate(r, s, TEXTS[:16], tmp_path / "s.safetensors"), progress=False)
    save_pairs(record(r, s, TEXTS[16:]), tmp_path / "pairs.safetensors")
    pairs = load_pairs(tmp_path / "pairs.safetensors")  # ids travel with the recorded passages
    before = [w.clone() for w in t.parameters()]
    report = distill(t, r, pairs[4:], pairs[:4], steps=30, lr=1e-4, check_every=10)
    assert report.kl_after < report.kl_before and report.best_step > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, t.parameters()))
    assert not any(p.requires_grad for p in t.parameters())  # back to a frozen map
    t.save_pretrained(tmp_path / "distilled")
    assert Translator.from_pretrained(tmp_path / "distilled").config.fit["distilled"]["steps"] == 30


def test_distilling_toward_the_sharer_matches_its_reading_and_refuses_another_vocabulary(tmp_path):
    from cache2cache.translation.distill import distill, distill_loss, teacher_logprobs
    from cache2cache.translation.refine import record

    r, s = tiny("tiny-llama"), tiny("tiny-llama-b")  # one tokenizer: the sharer reads the receiver's ids
    t = solve(accumulate(r, s, TEXTS[:16], tmp_path / "s.safetensors"), progress=False)
    pairs = record(r, s, TEXTS[16:])
    held = [(p, len(p.embedding)) for p in pairs[:4]]
    before = sum(float(distill_loss(t, r, p, c, teacher_logprobs(s, p, c))) for p, c in held)
    report = distill(t, r, pairs[4:], pairs[:4], steps=30, lr=1e-4, check_every=10, teacher=s)
    after = sum(float(distill_loss(t, r, p, c, teacher_logprobs(s, p, c))) for p, c in held)
    assert after < before and report.best_step > 0
    assert t.config.fit["distilled"]["teacher"] == "tiny-llama-b"
    with pytest.raises(C2CError, match="tokenizer"):
        distill(t, r, pairs[4:], pairs[:4], steps=1, teacher=tiny("tiny-qwen2"))
    from cache2cache.translation.recipe import FitRecipe

    with pytest.raises(C2CError, match="distill_target"):
        FitRecipe(distill_target="teacher")


def test_a_recipe_distilling_toward_a_sharer_of_another_tokenizer_fails_before_fitting(tmp_path, monkeypatch):
    from cache2cache.translation import recipe as recipe_module

    def read(*args, **kwargs):
        raise AssertionError("the passages were read before the teacher was checked")

    monkeypatch.setattr(recipe_module, "accumulate", read)
    texts = tmp_path / "passages.txt"
    texts.write_text("\n\n".join(t for _, t in TEXTS))
    recipe = recipe_module.FitRecipe(text=str(texts), refine=2, distill=1, distill_target="sharer")
    with pytest.raises(C2CError, match="tokenizer"):
        recipe_module.run_recipe(recipe, tiny("tiny-llama"), tiny("tiny-qwen2"), tmp_path / "s.safetensors")


def test_a_recorded_teacher_is_the_exact_kl_at_full_k_and_distils_without_reading_the_teacher_again(tmp_path):
    from cache2cache.translation.distill import distill, distill_loss, record_top_k, teacher_logprobs
    from cache2cache.translation.refine import record

    r, s = tiny("tiny-llama"), tiny("tiny-llama-b")
    t = solve(accumulate(r, s, TEXTS[:16], tmp_path / "s.safetensors"), progress=False)
    pairs = record(r, s, TEXTS[16:])
    vocab = r.model.get_output_embeddings().weight.shape[0]
    p, cut = pairs[0], len(pairs[0].embedding) // 2
    exact = float(distill_loss(t, r, p, cut, teacher_logprobs(s, p, cut, vocab)))
    record_top_k([p], s, vocab, vocab)
    assert float(distill_loss(t, r, p, cut, p.top_k)) == pytest.approx(exact, rel=1e-4)
    record_top_k([p], s, 4, vocab)  # another k: recorded again
    assert p.top_k.logp.shape[-1] == 4 and float(distill_loss(t, r, p, cut, p.top_k)) < exact  # a lower bound

    calls = []
    forward = s.model.forward
    s.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    report = distill(t, r, pairs[4:], pairs[:4], steps=20, lr=1e-4, check_every=10, teacher=s, top_k=16)
    assert len(calls) == len(pairs)  # one teacher forward per passage, none per step
    assert report.kl_after < report.kl_before and t.config.fit["distilled"]["top_k"] == 16
    distill(t, r, pairs[4:], pairs[:4], steps=1, teacher=s, top_k=16)
    assert len(calls) == len(pairs)  # the recording is kept with the pairs: none read again
    record_top_k(pairs[:1], r, 16, vocab)
    assert pairs[0].top_k.teacher == r.name != s.name  # another teacher's recording is not reused


def test_every_shipped_translator_recipe_loads():
    from cache2cache.translation.recipe import FitRecipe

    recipes = sorted((Path(__file__).parents[1] / "configs").glob("*translator*.toml"))
    assert len(recipes) >= 2
    for path in recipes:
        assert FitRecipe.load(path).text  # every key known and of its type; the checks of __post_init__ pass
