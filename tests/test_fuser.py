import json

import pytest
import torch

from cache2cache import C2CModel, Fuser, ModelGeometry
from cache2cache.caches.identity import ModelIdentity
from cache2cache.errors import C2CError
from cache2cache.fuser.config import PRESETS
from cache2cache.fuser.layer import gumbel_sigmoid

from .conftest import PAIRS, make_fuser, tiny


@pytest.mark.parametrize("receiver,sharer", PAIRS)
def test_layer_shapes_follow_each_models_geometry(receiver, sharer):
    r, s = tiny(receiver), tiny(sharer)
    rg, sg = ModelGeometry.from_config(r.model.config), ModelGeometry.from_config(s.model.config)
    fuser = make_fuser(r, s)
    assert len(fuser.config.layer_map) == rg.num_layers
    for ri, si in fuser.config.fused_layers():
        layer = fuser.layers[str(ri)]
        assert layer.key.inp.in_features == sg.layers[si].kv_dim + rg.layers[ri].kv_dim
        assert layer.key.out.out_features == rg.layers[ri].kv_dim
        assert layer.key.head_weight.out_features == rg.layers[ri].kv_heads


def test_geometry_reads_gqa_head_dims_and_sliding_layers():
    g = ModelGeometry.from_config(tiny("tiny-gemma3").model.config)
    assert [lg.sliding_window for lg in g.layers] == [8, 8, None, 8, None]
    assert g.layers[0].kv_heads == 1 and g.layers[0].head_dim == 32
    q = ModelGeometry.from_config(tiny("tiny-qwen2").model.config)
    assert (q.num_layers, q.layers[0].kv_heads, q.layers[0].head_dim) == (6, 1, 24)


def test_presets_scale_parameter_count():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    counts = {p: make_fuser(r, s, preset=p).num_parameters() for p in PRESETS}
    assert counts["compact"] < counts["base"] < counts["paper"]


def _fused_cache(model: C2CModel, prompts):
    batch = model.encode(prompts)
    cache, _ = model.prefill(batch)
    return cache


def test_closed_gates_give_exactly_the_receiver(prompts):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    fuser = make_fuser(r, s)
    with torch.no_grad():
        for layer in fuser.layers.values():
            layer.gate_logit.fill_(-1.0)
    model = C2CModel(r, [s], [fuser])
    assert torch.equal(model.next_token_logits(prompts, "c2c"), model.next_token_logits(prompts, "receiver"))
    fused, alone = model.generate(prompts, "c2c"), model.generate(prompts, "receiver")
    assert [x.text for x in fused.results] == [x.text for x in alone.results]


@pytest.mark.parametrize("receiver,sharer", PAIRS)
def test_open_gates_change_cache_and_logits(receiver, sharer, prompts):
    r, s = tiny(receiver), tiny(sharer)
    model = C2CModel(r, [s], [make_fuser(r, s)])
    fused = _fused_cache(model, prompts)
    with model.disable_fuser():
        plain = _fused_cache(model, prompts)
    for ri, _ in model.fusers[0].config.fused_layers():
        assert not torch.equal(fused.layers[ri].keys, plain.layers[ri].keys)
        assert not torch.equal(fused.layers[ri].values, plain.layers[ri].values)
    diff = (model.next_token_logits(prompts, "c2c") - model.next_token_logits(prompts, "receiver")).abs().max()
    assert diff > 1e-3


def test_untrained_zero_init_fuser_is_a_no_op(prompts):
    r, s = tiny("tiny-llama"), tiny("tiny-gemma3")
    model = C2CModel(r, [s], [make_fuser(r, s, zero_init=True)])
    assert torch.equal(model.next_token_logits(prompts, "c2c"), model.next_token_logits(prompts, "receiver"))


def test_padding_positions_are_not_fused():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    model = C2CModel(r, [s], [make_fuser(r, s)])
    prompts = ["a much longer prompt than the other one, to force padding", "hi"]
    fused = _fused_cache(model, prompts)
    with model.disable_fuser():
        plain = _fused_cache(model, prompts)
    pad = model.encode(prompts).mask[1, :-1] == 0
    assert pad.any()
    ri = model.fusers[0].config.fused_layers()[0][0]
    assert torch.equal(fused.layers[ri].keys[1, :, pad], plain.layers[ri].keys[1, :, pad])


def test_gumbel_gate_is_soft_in_training_and_hard_in_eval():
    torch.manual_seed(0)
    g = gumbel_sigmoid(torch.zeros(1000), temperature=1.0)
    assert 0 < g.min() and g.max() < 1 and abs(g.mean() - 0.5) < 0.05
    cold = gumbel_sigmoid(torch.zeros(1000), temperature=0.01)
    assert ((cold < 0.01) | (cold > 0.99)).float().mean() > 0.9  # annealed towards hard 0/1
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    layer = next(iter(make_fuser(r, s).layers.values()))
    layer.eval()
    assert layer.gates().tolist() == [1.0, 1.0]
    with torch.no_grad():
        layer.gate_logit.copy_(torch.tensor([0.5, -0.5]))
    assert layer.gates().tolist() == [1.0, 0.0]


def test_fuser_trains_end_to_end_through_the_receiver():
    """Gradients reach the fuser through the frozen receiver and the cache (what training relies on)."""
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    fuser = make_fuser(r, s, zero_init=True).train()
    model = C2CModel(r, [s], [fuser])
    batch = model.encode(["teach me"])
    with torch.enable_grad():
        with model.disable_fuser():  # the receiver's own cache; fused below with gradients on
            cache, _ = model.prefill(batch)
        model.fuse(cache, model.prefill_sharers(batch), batch)
        out = r.model(input_ids=batch.ids[:, -1:], past_key_values=cache)
        out.logits.float().logsumexp(-1).sum().backward()
    grads = [p.grad for p in fuser.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in r.model.parameters())


def test_save_load_round_trip(tmp_path, prompts):
    r, s = tiny("tiny-llama"), tiny("tiny-gemma3")
    fuser = make_fuser(r, s, seed=3)
    fuser.save_pretrained(tmp_path / "f")
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = Fuser.from_pretrained(tmp_path / "f")
    assert loaded.config == fuser.config
    for (k1, v1), (k2, v2) in zip(fuser.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    a = C2CModel(r, [s], [fuser]).generate(prompts)
    b = C2CModel(r, [s], [loaded]).generate(prompts)
    assert [x.text for x in a.results] == [x.text for x in b.results]
    assert torch.equal(C2CModel(r, [s], [fuser]).next_token_logits(prompts),
                       C2CModel(r, [s], [loaded]).next_token_logits(prompts))


def test_mismatched_pair_is_refused(tmp_path):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    make_fuser(r, s).save_pretrained(tmp_path / "f")
    fuser = Fuser.from_pretrained(tmp_path / "f")
    with pytest.raises(C2CError, match="trained for receiver tiny-llama <- sharer tiny-qwen2"):
        C2CModel(r, [tiny("tiny-gemma3")], [fuser])
    with pytest.raises(C2CError, match="trained for"):
        C2CModel(tiny("tiny-gemma3"), [s], [fuser])


def test_corrupt_or_missing_files_are_clear_errors(tmp_path):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    d = make_fuser(r, s).save_pretrained(tmp_path / "f")
    (d / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(C2CError, match="corrupt fuser weights"):
        Fuser.from_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(C2CError, match="corrupt fuser config"):
        Fuser.from_pretrained(d)
    with pytest.raises(C2CError, match="not found"):
        Fuser.from_pretrained(tmp_path / "nope")


def test_unknown_config_keys_load_with_a_warning(tmp_path):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    d = make_fuser(r, s).save_pretrained(tmp_path / "f")
    cfg = json.loads((d / "config.json").read_text())
    cfg["from_the_future"] = 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="from_the_future"):
        Fuser.from_pretrained(d)


def test_the_shipped_default_fuser_fits_the_default_pair():
    import argparse

    from cache2cache.cli.common import model_names
    from cache2cache.inference.factory import DEFAULT_FUSER, DEFAULT_RECEIVER, DEFAULT_SHARER

    fuser = Fuser.from_pretrained(DEFAULT_FUSER)
    assert (fuser.config.receiver, fuser.config.sharer) == (DEFAULT_RECEIVER, DEFAULT_SHARER)
    assert (DEFAULT_FUSER / "model.safetensors").stat().st_size < 40e6  # small enough to live in git
    assert any(k > 0 or v > 0 for k, v in fuser.gate_logits().values())  # not a no-op: some gates open
    none = argparse.Namespace(receiver=None, sharer=None, fuser=[])
    assert model_names(none) == (DEFAULT_RECEIVER, [DEFAULT_SHARER], [DEFAULT_FUSER])
    other = argparse.Namespace(receiver="tiny-llama", sharer=["tiny-qwen2"], fuser=[])
    assert model_names(other) == ("tiny-llama", ["tiny-qwen2"], [])


@pytest.mark.parametrize("edit,why", [
    (lambda c: c.pop("receiver_geometry"), "missing receiver_geometry"),
    (lambda c: c.pop("layer_map"), "missing layer_map"),
    (lambda c: c.update(layer_map="abc"), "layer_map must be a list"),
    (lambda c: c.update(layer_map=["x"] * len(c["layer_map"])), "sharer layer numbers"),
    (lambda c: c.update(layer_map=[99] * len(c["layer_map"])), "sharer layer numbers"),
    (lambda c: c.update(hidden_dim="128"), "hidden_dim must be a int"),
    (lambda c: c.update(gate_init="1"), "gate_init must be a float"),
    (lambda c: c.update(zero_init=1), "zero_init must be a bool"),
    (lambda c: c.update(sharer_geometry=[1, 2]), "sharer_geometry must be a dict"),
    (lambda c: c.update(receiver_geometry={"arch": "x"}), "not a model geometry"),
    (lambda c: c.update(token_alignment="sideways"), "token_alignment must be one of"),
    (lambda c: c.update(receiver=5), "receiver must be a str"),
])  # fmt: skip
def test_a_hand_edited_config_fails_with_one_line(tmp_path, edit, why):
    d = make_fuser(tiny("tiny-llama"), tiny("tiny-qwen2")).save_pretrained(tmp_path / "f")
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(C2CError, match=why):
        Fuser.from_pretrained(d)


def test_bf16_files_load_back_to_the_rounded_weights_and_the_same_answers(tmp_path, prompts):
    """How the shipped fusers are stored: half the bytes, every weight the bf16 rounding of the fp32 one, loaded
    as fp32; fused answers equal those of the in-memory fuser rounded the same way."""
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    fuser = make_fuser(r, s)
    full = fuser.save_pretrained(tmp_path / "fp32")
    half = fuser.save_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    size = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.49 < size < 0.55
    loaded = Fuser.from_pretrained(half)
    rounded = {k: v.to(torch.bfloat16).float() for k, v in fuser.state_dict().items()}
    assert all(v.dtype == torch.float32 and torch.equal(v, rounded[k]) for k, v in loaded.state_dict().items())
    fuser.load_state_dict(rounded)
    want = C2CModel(r, [s], [fuser]).next_token_logits(prompts)
    assert torch.equal(C2CModel(r, [s], [loaded]).next_token_logits(prompts), want)


def test_check_pair_refuses_other_kv_shapes_under_the_same_names():
    """A model re-exported with other shapes (here: the sharer's geometry with one layer less) keeps its name; the
    recorded geometry still tells them apart."""
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    fuser = make_fuser(r, s)
    r_geo, s_geo = ModelGeometry.from_config(r.model.config), ModelGeometry.from_config(s.model.config)
    ident = lambda name, geo: ModelIdentity(name, "", geo)  # noqa: E731
    fuser.check_pair(ident(r.name, r_geo), ident(s.name, s_geo))  # the real pair passes
    shallower = ModelGeometry(s_geo.arch, s_geo.vocab_size, s_geo.layers[:-1])
    with pytest.raises(C2CError, match="same names, different models"):
        fuser.check_pair(ident(r.name, r_geo), ident(s.name, shallower))
    with pytest.raises(C2CError, match="trained for"):
        fuser.check_pair(ident(r.name, r_geo), ident("tiny-gemma3", s_geo))
