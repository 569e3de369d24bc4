"""Selective recompute (`Recompute.own_tokens`): the receiver's own layers run over only the brief tokens whose
translated keys miss its own most, every other token keeping the translated keys and values."""

import contextlib
import math

import pytest
import torch

from cache2cache import C2CModel
from cache2cache.caches.prompt_cache import PromptCache
from cache2cache.errors import C2CError
from cache2cache.models.loading import decoder_layers, load_model
from cache2cache.translation.features import BriefSpan
from cache2cache.translation.reading import translate_brief, translate_parts
from cache2cache.translation.recompute import Recompute, fact_tokens, lead_tokens, pick_tokens, selected_layers
from cache2cache.translation.translator import Translator

from .conftest import entering_states, make_fuser, tiny
from .test_recompute import self_entries  # noqa: F401  (a module fixture: tiny-llama into itself, entry maps 1, 2)
from .test_translation import QUESTION, TEXTS


def own_reading(m, brief: str) -> tuple[PromptCache, PromptCache, BriefSpan]:
    span = BriefSpan.of(m, QUESTION, brief)
    prefix = PromptCache.empty(m).extend(m, span.ids[:span.start])
    return prefix, PromptCache.empty(m).extend(m, span.ids[:span.end]), span


@pytest.mark.parametrize("m_layer", [0, 1])
def test_picked_tokens_recomputed_over_an_exact_context_are_the_models_own(m_layer):
    """Fed the model's own cache as the 'translation', recomputing any tokens from layer m gives back exactly its
    own keys and values: positions, the mask (each picked token sees the others' cache before it and the picked
    ones up to itself) and the write-back are right."""
    m = tiny("tiny-llama")
    prefix, own, span = own_reading(m, TEXTS[4][1])
    n = len(decoder_layers(m.model))
    state = entering_states(m, span.ids[:span.end], [m_layer])[0][span.start:] if m_layer else None
    picked = [0, 2, 3, len(span.brief_ids) - 1]
    at = [span.start + t for t in picked]
    noisy = [k.clone() for k in own.keys]
    for k in noisy:  # wrong keys where the picked tokens sit: they must never be read
        k[:, at] += 0.5 * torch.randn_like(k[:, at])
    keys, values = selected_layers(m, prefix, span.brief_ids, state, m_layer, n, noisy, own.values, picked)
    for i in range(m_layer, n):
        torch.testing.assert_close(keys[i], own.keys[i], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(values[i], own.values[i], atol=2e-5, rtol=1e-4)
    for i in range(m_layer):
        assert torch.equal(keys[i], noisy[i])  # below m: what was given, untouched


def test_a_sliding_window_receiver_is_exact_within_its_window_and_refused_beyond():
    """One mask serves every layer while the prompt up to the brief's end fits the sliding window; past it a
    sliding layer would show the picked tokens another window, so the brief is refused with a one-line error."""
    g = load_model("tiny-gemma3")  # its own copy: the window is changed below
    prefix, own, span = own_reading(g, TEXTS[4][1])
    n, picked = len(decoder_layers(g.model)), [0, 2, len(span.brief_ids) - 1]
    assert g.model.config.sliding_window - 1 < span.end
    with pytest.raises(C2CError, match="sliding-window layers see 7 tokens back"):
        selected_layers(g, prefix, span.brief_ids, None, 0, n, own.keys, own.values, picked)
    g.model.config.sliding_window = 4 * span.end  # a window the prompt fits in, as a real receiver's (512 and more)
    prefix, own, span = own_reading(g, TEXTS[4][1])
    noisy = [k.clone() for k in own.keys]
    for k in noisy:
        k[:, [span.start + t for t in picked]] += 0.5
    keys, values = selected_layers(g, prefix, span.brief_ids, None, 0, n, noisy, own.values, picked)
    for i in range(n):
        torch.testing.assert_close(keys[i], own.keys[i], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(values[i], own.values[i], atol=2e-5, rtol=1e-4)


def test_own_tokens_keeps_the_others_translated_and_at_full_share_is_the_knob(self_entries):  # noqa: F811
    m = tiny("tiny-llama")
    n = len(decoder_layers(m.model))
    plain, span = translate_brief(self_entries, m, m, QUESTION, TEXTS[5][1])
    t = span.end - span.start
    knob = Recompute(own_from=1, own_tokens=0.3)
    some = translate_parts([(self_entries, m)], m, QUESTION, [TEXTS[5][1]], recompute=knob)[0]
    assert some.meta["own_tokens"] == 0.3 and some.meta["pick"] == "facts"
    changed = {p for i in range(1, n) for p in range(span.start, span.end)
               if not torch.equal(some.keys[i][:, p], plain.keys[i][:, p])}  # fmt: skip
    assert 0 < len(changed) <= math.ceil(0.3 * t)  # only the picked tokens, and only at layers from m
    assert torch.equal(some.keys[0], plain.keys[0]) and torch.equal(some.values[0], plain.values[0])
    top = translate_parts([(self_entries, m)], m, QUESTION, [TEXTS[5][1]], recompute=Recompute(own_from=1))[0]
    every = translate_parts([(self_entries, m)], m, QUESTION, [TEXTS[5][1]],
                            recompute=Recompute(own_from=1, own_tokens=0.999))[0]  # fmt: skip
    own = own_reading(m, TEXTS[5][1])[1]
    whole = translate_parts([(self_entries, m)], m, QUESTION, [TEXTS[5][1]], recompute=Recompute(own_tokens=0.999))[0]
    for i in range(n):  # every token picked: the knob from the top, and from layer 0 the receiver's own reading
        torch.testing.assert_close(every.keys[i], top.keys[i], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(whole.keys[i], own.keys[i], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(whole.values[i], own.values[i], atol=1e-4, rtol=1e-3)


def test_own_tokens_refusals(self_entries):  # noqa: F811
    m = tiny("tiny-llama")
    for bad, match in ((Recompute(own_tokens=0), "own-tokens must be"), (Recompute(own_tokens=1.5), "own-tokens must"),
                       (Recompute(own_first=1, own_tokens=0.5), "applies to the layers"),
                       (Recompute(own_tokens=0.5, pick="best"), "pick must be")):  # fmt: skip
        with pytest.raises(C2CError, match=match):
            C2CModel(m, [m], [make_fuser(m, m)], translators=[self_entries], recompute=bad)


def marked_words(m, text: str, mark) -> tuple[list[str], torch.Tensor, list[int]]:
    """The words of `text` whose tokens `mark` (fact_tokens, lead_tokens) marks, with the marks and the ids."""
    ids = m.tokenizer(text, add_special_tokens=False)["input_ids"]
    marked = mark(m, ids)
    return "".join(m.tokenizer.decode([t]) for t, f in zip(ids, marked) if f).split(), marked, ids


def test_fact_tokens_mark_every_piece_of_names_and_numbers_only():
    text = "The inspector, Tomas Brenner, found 37 bolts. Traffic fell in October."
    assert marked_words(tiny("tiny-llama"), text, fact_tokens)[0] == ["Tomas", "Brenner,", "37", "October."]


def test_lead_tokens_are_the_word_before_each_fact():
    m = tiny("tiny-llama")
    text = "The team leader, Mara Ilves, counted 412 herons. It rained in May."
    stated, leads, ids = marked_words(m, text, lead_tokens)
    assert stated == ["leader,", "counted", "in"]  # "Mara" leads into "Ilves", but it is a fact itself
    assert not (leads & fact_tokens(m, ids)).any()


def test_picking_policies():
    """`spread` is evenly spaced, first and last included; `facts` takes every token of names and numbers, then
    those of the word before each, then spreads the rest evenly over the other tokens, and thins a tier evenly
    when it exceeds what is left of the share; neither runs a layer, so the share is the tokens' alone."""
    m = tiny("tiny-llama")
    n = len(decoder_layers(m.model))
    brief = "The inspector, Tomas Brenner, found 37 cracked bolts on the east span during the check in the rain."
    ids = m.tokenizer(brief, add_special_tokens=False)["input_ids"]
    t, stated = len(ids), set(torch.nonzero(fact_tokens(m, ids)).flatten().tolist())
    leads = set(torch.nonzero(lead_tokens(m, ids)).flatten().tolist())
    spread = pick_tokens(m, ids, 0.25, "spread")
    assert spread[0] == 0 and spread[-1] == t - 1 and len(spread) == math.ceil(0.25 * t)
    facts = pick_tokens(m, ids, 0.6, "facts")
    assert stated | leads < set(facts) and len(facts) == math.ceil(0.6 * t) and facts == sorted(facts)
    some = pick_tokens(m, ids, (len(stated) + 1) / t, "facts")
    assert set(some) - stated < leads and len(some) == len(stated) + 1
    few = pick_tokens(m, ids, 1 / t, "facts")
    assert len(few) == 1 and set(few) <= stated
    assert Recompute(own_tokens=0.25, pick="facts").share(n) == 0.25
    assert Recompute(own_from=1, own_tokens=0.5).share(n) == pytest.approx((n - 1) * 0.5 / n)


def noisy_translator(t: Translator, scale: float = 0.6) -> Translator:
    """A copy of `t` with its key maps scaled off the near-identity, so recomputed tokens visibly differ."""
    out = Translator(t.config)
    out.load_state_dict(t.state_dict())
    with torch.no_grad():
        for lin in out.keys:
            lin.weight.mul_(scale)
    return out


def test_the_distillation_student_under_own_tokens_is_the_pipelines_cache_read_on(self_entries):  # noqa: F811
    """Through `--own-tokens`, the distillation's student (the picked tokens recomputed at every layer beside the
    translated others) reads on exactly as the receiver does from the pipeline's cache under the same knob, and
    not as from the knob-free one; gradients reach every layer's maps through the recomputed tokens."""
    from cache2cache.translation.distill import distill_loss, student_logits
    from cache2cache.translation.fit import FIT_QUESTION, passage_pair

    m, t = tiny("tiny-llama"), noisy_translator(self_entries)
    pair = passage_pair(m, m, TEXTS[3][1])
    knob, n = Recompute(own_tokens=0.4), len(pair.embedding)
    cache = translate_parts([(t, m)], m, [{"role": "user", "content": FIT_QUESTION}], [TEXTS[3][1]], recompute=knob)[0]
    end = len(cache)
    rest = torch.tensor([pair.ids[end:]])
    want = m.model(input_ids=rest, position_ids=torch.arange(end, len(pair.ids))[None],
                   past_key_values=cache.to_transformers(m), use_cache=True).logits[0]  # fmt: skip
    with torch.no_grad():
        got, plain = student_logits(t, m, pair, n, knob), student_logits(t, m, pair, n)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (plain - want).abs().max() > 1e-2
    t.requires_grad_(True)
    distill_loss(t, m, pair, n, knob=knob).backward()
    assert all(lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0 for lin in list(t.keys) + list(t.values))


def test_a_fit_distils_through_own_tokens_and_names_it(tmp_path, capsys):
    """`c2c fit --distill-own-tokens P` distils every map through the token knob and says so in its fit and README;
    a share without distillation steps, out of (0, 1], or beside --distill-own-from is refused in one line."""
    import json

    from cache2cache.cli.main import main

    texts = tmp_path / "passages.txt"
    texts.write_text("\n\n".join(t for _, t in TEXTS))
    common = ["fit", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--text", str(texts), "--refine", "6",
              "--refine-steps", "0", "--distill", "2"]  # fmt: skip
    assert main([*common, "--distill-own-tokens", "0.5", "--out", str(tmp_path / "t"), "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["distilled"]["own_tokens"] == 0.5 and fit["distilled"]["pick"] == "facts"
    assert "through `--own-tokens 0.5`" in (tmp_path / "t" / "README.md").read_text()
    again = ["fit", "--from", str(tmp_path / "t"), *common[5:]]
    assert main([*again, "--out", str(tmp_path / "t2"), "--json"]) == 0  # distilled again: both kept, both named
    fit = json.loads(capsys.readouterr().out)
    assert "own_tokens" not in fit["distilled"] and fit["distilled"]["after"]["own_tokens"] == 0.5
    assert "after an earlier distillation: on " in (tmp_path / "t2" / "README.md").read_text()
    assert main(["fit", "--from", str(tmp_path / "t2"), *common[5:], "--out", str(tmp_path / "t4")]) == 0
    card = (tmp_path / "t4" / "README.md").read_text()  # a third: the whole history, oldest first
    assert "after earlier distillations: on " in card and ", then on " in card.split("earlier distillations")[1]
    assert "through `--own-tokens 0.5`, then on" in card
    capsys.readouterr()
    assert main([*again, "--sharer", "tiny-llama", "--out", str(tmp_path / "t3")]) != 0  # not the saved pair
    assert "translator" in capsys.readouterr().err and not (tmp_path / "t3").exists()
    for bad, says in ((["fit", "--distill-own-tokens", "0.5"], "distill STEPS"),
                      (["fit", "--distill", "2", "--distill-own-tokens", "1.5"], "share in (0, 1]"),
                      ([*common, "--distill-own-tokens", "0.5", "--distill-own-from", "2"], "not both")):
        with pytest.raises(SystemExit) if "1.5" in bad else contextlib.nullcontext():
            assert main(bad) != 0
        assert says in capsys.readouterr().err
