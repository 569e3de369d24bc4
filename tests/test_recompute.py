"""The fidelity knob from the top: entry maps (the receiver's state entering layer m, written from the sharer's
reading) and the receiver recomputing its layers m..L-1 over a translated brief from that state."""

import pytest
import torch

from cache2cache import C2CModel
from cache2cache.caches.prompt_cache import PromptCache
from cache2cache.errors import C2CError
from cache2cache.inference.answerers import answerer
from cache2cache.inference.batching import Briefed, to_messages
from cache2cache.models.loading import decoder_layers
from cache2cache.translation.config import TranslatorConfig
from cache2cache.translation.entries import fit_entries
from cache2cache.translation.features import BriefSpan
from cache2cache.translation.fit import accumulate, solve
from cache2cache.translation.reading import translate_brief, translate_parts
from cache2cache.translation.recompute import Recompute, upper_layers
from cache2cache.translation.translator import Translator

from .conftest import entering_states, make_fuser, tiny
from .test_translation import QUESTION, TEXTS

KNOB2 = Recompute(own_from=2)  # the knob from layer 2 of tiny-llama's 4


@pytest.fixture(scope="module")
def self_entries(tmp_path_factory) -> Translator:
    """tiny-llama translated into itself, with entry maps for layers 1 and 2: the sharer's state entering a layer
    of the same depth is the receiver's own, so the fitted maps are (nearly) the identity."""
    m, d = tiny("tiny-llama"), tmp_path_factory.mktemp("fit")
    t = solve(accumulate(m, m, TEXTS, d / "s.safetensors", width=1), ["keys", "values"], ["keys", "values"],
              progress=False)  # fmt: skip
    return fit_entries(t, m, m, TEXTS, [1, 2], d / "e.safetensors", text="test passages")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_upper_layers_from_the_models_own_entering_state_are_its_own_cache(name):
    """Fed the state its own prefill has there, the recomputed layers m..L-1 are exactly its prefill's (sliding
    windows included), the template prefix read from its cache."""
    m = tiny(name)
    span = BriefSpan.of(m, QUESTION, TEXTS[4][1])
    own = PromptCache.empty(m).extend(m, span.ids[:span.end])
    n = len(own.keys)
    for layer in (1, n - 1):
        state = entering_states(m, span.ids[:span.end], [layer])[0][span.start:]
        prefix = PromptCache.empty(m).extend(m, span.ids[:span.start])
        keys, values = upper_layers(m, prefix, span.brief_ids, state, layer)
        assert len(keys) == n - layer
        for i, (k, v) in enumerate(zip(keys, values), start=layer):
            torch.testing.assert_close(k, own.keys[i], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(v, own.values[i], atol=2e-5, rtol=1e-4)


def test_entry_maps_fit_save_load_and_make_a_self_translation_the_receivers_reading(self_entries, tmp_path):
    m = tiny("tiny-llama")
    fit = self_entries.config.fit["entries"]
    assert fit["layers"] == [1, 2] and fit["sharer_layers"] == [[1], [2]] and min(fit["r2"]) > 0.99
    assert fit["passages"] == {"t": len(TEXTS)} and fit["text"] == "test passages"
    self_entries.save_pretrained(tmp_path / "t")
    again = Translator.from_pretrained(tmp_path / "t")
    assert again.config.entry_layers == [1, 2] and again.fingerprint() == self_entries.fingerprint()
    assert "entry_window" not in (tmp_path / "t" / "config.json").read_text()  # older fingerprints kept
    plain, span = translate_brief(self_entries, m, m, QUESTION, TEXTS[5][1])
    top = translate_parts([(again, m)], m, QUESTION, [TEXTS[5][1]], recompute=Recompute(own_from=2))[0]
    own = PromptCache.empty(m).extend(m, span.ids[:span.end])
    assert top.meta["own_from"] == 2
    for i in range(len(own.keys)):
        want = plain if i < 2 else own  # below m as translated; from m on the receiver's own computation
        torch.testing.assert_close(top.keys[i], want.keys[i], atol=0.05 * float(own.keys[i].abs().max()), rtol=0)
        torch.testing.assert_close(top.values[i], want.values[i], atol=0.05 * float(own.values[i].abs().max()),
                                   rtol=0)  # fmt: skip
        if i < 2:
            torch.testing.assert_close(top.keys[i], plain.keys[i])  # exactly the translator's, untouched


def test_own_from_through_the_pipeline_and_its_refusals(self_entries, tmp_path):
    m, r, s = tiny("tiny-llama"), tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(m, [m], [make_fuser(m, m)], translators=[self_entries], recompute=Recompute(own_from=1))
    plain = C2CModel(m, [m], [make_fuser(m, m)], translators=[self_entries])
    qs, opts = [Briefed("Which gate?", TEXTS[1][1]), Briefed("Hi", TEXTS[9][1])], [[" gate", " fox"]] * 2
    top = answerer(model, "translated").logprobs(qs, opts).values
    reading = answerer(model, "receiver_brief").logprobs(qs, opts).values
    assert all(a == pytest.approx(b, abs=0.05) for a, b in zip(top, reading))
    assert model.heads.space() != plain.heads.space()  # heads written with the knob are stored apart
    assert model.heads.head(to_messages(QUESTION), TEXTS[1][1]).meta["own_from"] == 1
    with pytest.raises(C2CError, match="no entry map for layer 3"):
        C2CModel(m, [m], [make_fuser(m, m)], translators=[self_entries], recompute=Recompute(own_from=2 + 1))
    cross = solve(accumulate(r, s, TEXTS[:10], tmp_path / "s.safetensors"), progress=False)  # no entry maps
    with pytest.raises(C2CError, match="no entry map"):
        C2CModel(r, [s], [make_fuser(r, s)], translators=[cross], recompute=Recompute(own_from=1))
    with pytest.raises(C2CError, match="overlap"):
        C2CModel(m, [m], [make_fuser(m, m)], translators=[self_entries], recompute=Recompute(2, 1))
    with pytest.raises(C2CError, match="entry layers must be"):
        fit_entries(self_entries, m, m, TEXTS[:2], [0], None)


def test_own_to_recomputes_a_window_and_leaves_the_layers_above_translated(self_entries):
    """`own_to` ends the receiver's own layers early: inside the window they are the knob-from-the-top's own
    computation, outside it exactly the translator's keys and values; its share counts the window alone."""
    m = tiny("tiny-llama")
    n = len(decoder_layers(m.model))
    plain = translate_brief(self_entries, m, m, QUESTION, TEXTS[5][1])[0]
    top = translate_parts([(self_entries, m)], m, QUESTION, [TEXTS[5][1]], recompute=Recompute(own_from=1))[0]
    knob = Recompute(own_from=1, own_to=2)
    window = translate_parts([(self_entries, m)], m, QUESTION, [TEXTS[5][1]], recompute=knob)[0]
    assert window.meta["own_to"] == 2 and knob.share(n) == 1 / n
    for i in range(n):
        want = top if i == 1 else plain
        torch.testing.assert_close(window.keys[i], want.keys[i])
        torch.testing.assert_close(window.values[i], want.values[i])
    assert not torch.equal(top.keys[2], plain.keys[2])  # the window's edge is visible: above it, translated
    assert self_entries.config.sharer_depth(1, 2) == n > self_entries.config.sharer_depth(1)
    for bad in (Recompute(own_to=2), Recompute(own_from=2, own_to=2), Recompute(own_from=1, own_to=n + 1)):
        with pytest.raises(C2CError, match="own-to layer"):
            C2CModel(m, [m], [make_fuser(m, m)], translators=[self_entries], recompute=bad)


def test_entry_maps_of_a_window_of_sharer_layers_read_their_states_side_by_side(self_entries, tmp_path):
    """With `window` 2 each entry map reads the states entering two sharer layers; a self-translation still
    writes the receiver's own state, saved, loaded and used by `--own-from` like a window of one."""
    m = tiny("tiny-llama")
    wide = fit_entries(self_entries, m, m, TEXTS, [1, 2], tmp_path / "e.safetensors", window=2)
    cfg = wide.config
    assert cfg.entry_window == 2 and [cfg.entry_sharer_layers(x) for x in (1, 2)] == [[1, 2], [2, 3]]
    assert wide.entries["1"].in_features == 2 * cfg.sharer_hidden + 2 * cfg.receiver_hidden
    fit = wide.config.fit["entries"]
    assert fit["sharer_layers"] == [[1, 2], [2, 3]] and min(fit["r2"]) > 0.99
    assert len(fit["r2_central_layer_only"]) == 2 and min(fit["r2_central_layer_only"]) > 0.99
    wide.save_pretrained(tmp_path / "w")
    again = Translator.from_pretrained(tmp_path / "w")
    assert again.config.entry_window == 2 and again.fingerprint() == wide.fingerprint()
    span = BriefSpan.of(m, QUESTION, TEXTS[5][1])
    own = PromptCache.empty(m).extend(m, span.ids[:span.end])
    top = translate_parts([(again, m)], m, QUESTION, [TEXTS[5][1]], recompute=Recompute(own_from=1))[0]
    for i in range(1, len(own.keys)):
        torch.testing.assert_close(top.keys[i], own.keys[i], atol=0.05 * float(own.keys[i].abs().max()), rtol=0)
    with pytest.raises(C2CError, match="entry_window"):
        TranslatorConfig(**{**vars(cfg), "entry_window": 99})


def test_the_shipped_translator_carries_entry_maps_and_names_their_text():
    """The default pair's translator ships the knob from the top (`--own-from 15` or 21) and says what every map
    was fitted on: none of it from the held-out evaluation families."""
    from cache2cache.translation.translator import SHIPPED

    cfg = TranslatorConfig.load(SHIPPED / "smollm2-135m-from-qwen2.5-coder-1.5b")
    assert cfg.entry_layers == [15, 21] and cfg.sharer_hidden == 1536
    entries = cfg.fit["entries"]
    assert entries["layers"] == [15, 21] and len(entries["r2"]) == 2 and entries["tokens"] > 10_000
    texts = " ".join([cfg.fit["text"], entries["text"]]).lower()
    assert "sciq" in texts and not any(f in texts for f in ("arc", "openbook", "mmlu", "gsm8k", "squad", "drop",
                                                            "coqa"))  # fmt: skip


def test_the_distillation_student_through_the_knob_is_the_pipelines_cache_read_on(self_entries):
    """With `own_from`, the distillation's student (template, translated layers below m, the receiver's own from
    the entry state) reads on exactly as the receiver does from the pipeline's knob cache; a broken entry map
    costs KL that an intact one does not."""
    from cache2cache.translation.distill import distill_loss, student_logits
    from cache2cache.translation.fit import FIT_QUESTION, passage_pair
    from cache2cache.translation.refine import record

    m = tiny("tiny-llama")
    pair = passage_pair(m, m, TEXTS[3][1], states_of=self_entries.config.entry_sharer_layers(2))  # float32
    assert pair.s_states.shape == (len(pair.embedding), self_entries.config.sharer_hidden)
    messages = [{"role": "user", "content": FIT_QUESTION}]
    cache = translate_parts([(self_entries, m)], m, messages, [TEXTS[3][1]], recompute=Recompute(own_from=2))[0]
    end = len(cache)
    assert pair.ids[:end] == cache.token_ids and end == pair.start + len(pair.embedding)
    rest = torch.tensor([pair.ids[end:]])
    want = m.model(input_ids=rest, position_ids=torch.arange(end, len(pair.ids))[None],
                   past_key_values=cache.to_transformers(m), use_cache=True).logits[0]  # fmt: skip
    with torch.no_grad():
        got = student_logits(self_entries, m, pair, len(pair.embedding), KNOB2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert float(distill_loss(self_entries, m, pair, len(pair.embedding), knob=KNOB2)) < 1e-3  # near-exact maps
    broken = Translator(self_entries.config)
    broken.load_state_dict({k: v for k, v in self_entries.state_dict().items() if not k.startswith("entries.")},
                           strict=False)  # fmt: skip
    assert float(distill_loss(broken, m, pair, len(pair.embedding), knob=KNOB2)) > 1e-2
    with pytest.raises(C2CError, match="sharer's states"):
        student_logits(self_entries, m, record(m, m, TEXTS[3:4])[0], 3, KNOB2)


def test_distilling_an_entry_map_trains_it_alone_and_is_recorded(self_entries, tmp_path):
    """Distilled through the knob, only the entry map of m moves, the held-out KL falls, the recorded states
    survive a save of the pairs, and the fit names the step apart from the maps' distillation."""
    from cache2cache.translation.distill import distill
    from cache2cache.translation.refine import load_pairs, record, save_pairs

    m = tiny("tiny-llama")
    t = Translator(self_entries.config)
    t.load_state_dict(self_entries.state_dict())
    with torch.no_grad():  # an entry map off the identity, so that there is something to learn
        t.entries["2"].weight.mul_(0.6)
    save_pairs(record(m, m, TEXTS[:10], states_of=t.config.entry_sharer_layers(2)), tmp_path / "p.safetensors")
    pairs = load_pairs(tmp_path / "p.safetensors")
    assert all(p.s_states is not None for p in pairs)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    report = distill(t, m, pairs[2:], pairs[:2], steps=20, lr=1e-3, check_every=5, knob=KNOB2)
    assert report.kl_after < report.kl_before
    moved = {k for k, v in t.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("entries.2.") for k in moved)
    assert t.config.fit["distilled_entry"]["own_from"] == 2 and "distilled" not in t.config.fit
    with pytest.raises(C2CError, match="no entry map for layer 3"):
        distill(t, m, pairs[2:], pairs[:2], steps=1, knob=Recompute(own_from=3))


def test_a_recipe_fits_an_entry_map_then_distils_it_and_refuses_one_it_lacks(tmp_path, capsys):
    """`c2c fit --entry-layers 2 --distill-own-from 2`: the entry map is fitted first, the refinement passages are
    read with the sharer's states, and only that map is distilled; without the entry map, a one-line refusal."""
    import json

    from cache2cache.cli.main import main

    texts = tmp_path / "passages.txt"
    texts.write_text("\n\n".join(t for _, t in TEXTS))
    common = ["fit", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--text", str(texts), "--refine", "6",
              "--refine-steps", "0", "--distill", "2"]  # fmt: skip
    assert main([*common, "--entry-layers", "2", "--distill-own-from", "2", "--out", str(tmp_path / "t"),
                 "--json"]) == 0  # fmt: skip
    fit = json.loads(capsys.readouterr().out)
    assert fit["distilled_entry"]["own_from"] == 2 and fit["distilled_entry"]["passages"] == 5
    assert "distilled" not in fit and fit["entries"]["layers"] == [2]
    assert "entry map of layer 2 then distilled" in (tmp_path / "t" / "README.md").read_text()
    assert main([*common, "--distill-own-from", "2", "--out", str(tmp_path / "u")]) != 0
    assert "no entry map for it" in capsys.readouterr().err
    assert main([*common[:5], "--from", str(tmp_path / "t"), "--refine", "4", "--refine-steps", "0", "--distill", "1",
                 "--distill-own-from", "3", "--out", str(tmp_path / "v")]) != 0  # fmt: skip
    assert "has no entry map for it" in capsys.readouterr().err
    assert main(["fit", "--distill-own-from", "2"]) != 0  # before any model loads
    assert "distill STEPS" in capsys.readouterr().err


def test_a_fresh_fit_reads_its_entry_maps_with_the_key_and_value_maps_once(tmp_path):
    """Entry maps gathered in the key and value maps' own reading are the maps a reading of their own fits: the
    same key and value maps, entry maps equal to rounding, one statistics file, and a resume that asks for other
    entry layers is refused."""
    r, s = tiny("tiny-llama"), tiny("tiny-llama-b")
    both = solve(accumulate(r, s, TEXTS, tmp_path / "both.safetensors", width=1, entry_layers=[2, 1], entry_window=2),
                 ["keys", "values"], ["keys", "values"], progress=False)  # fmt: skip
    apart = solve(accumulate(r, s, TEXTS, tmp_path / "kv.safetensors", width=1), ["keys", "values"],
                  ["keys", "values"], progress=False)  # fmt: skip
    apart = fit_entries(apart, r, s, TEXTS, [1, 2], tmp_path / "e.safetensors", window=2)
    assert both.config.entry_layers == [1, 2] and both.config.entry_window == 2
    for name, tensor in apart.state_dict().items():
        torch.testing.assert_close(both.state_dict()[name], tensor, atol=1e-4, rtol=1e-3, msg=name)
    one, two = both.config.fit["entries"], apart.config.fit["entries"]
    assert one["read_with_maps"] and one["tokens"] == two["tokens"] and one["passages"] == two["passages"]
    assert one["r2"] == pytest.approx(two["r2"], abs=1e-3) and one["sharer_layers"] == two["sharer_layers"]
    assert len(one["r2_central_layer_only"]) == 2
    with pytest.raises(C2CError, match="other entry layers"):
        accumulate(r, s, TEXTS, tmp_path / "both.safetensors", width=1, entry_layers=[1])


def test_under_the_knob_the_sharer_reads_only_as_deep_as_the_layers_below_it_need(tmp_path, monkeypatch):
    """own_from m: the translator writes only layers below m, so the sharer stops after the layers those maps and
    the entry map read (tiny-llama-b: 2 of 4 for m = 2); the head is the one a whole reading writes."""
    r, s = tiny("tiny-llama"), tiny("tiny-llama-b")
    t = solve(accumulate(r, s, TEXTS, tmp_path / "s.safetensors", width=1), ["keys", "values"], ["keys", "values"],
              progress=False)  # fmt: skip
    t = fit_entries(t, r, s, TEXTS, [2], tmp_path / "e.safetensors", text="test passages")
    assert t.config.sharer_depth(2) == 2 and t.config.sharer_depth() == 4
    ran: list[int] = []
    hooks = [layer.register_forward_hook(lambda *_, i=i: ran.append(i))
             for i, layer in enumerate(decoder_layers(s.model))]  # fmt: skip
    try:
        short = translate_parts([(t, s)], r, QUESTION, [TEXTS[5][1]], recompute=Recompute(own_from=2))[0]
    finally:
        for h in hooks:
            h.remove()
    assert sorted(set(ran)) == [0, 1]
    monkeypatch.setattr(TranslatorConfig, "sharer_depth", lambda self, own_from=0, own_to=0: 4)
    whole = translate_parts([(t, s)], r, QUESTION, [TEXTS[5][1]], recompute=Recompute(own_from=2))[0]
    for a, b in zip(short.keys + short.values, whole.keys + whole.values):
        torch.testing.assert_close(a, b)
