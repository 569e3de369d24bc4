"""Fusers as Hub repos (a local mock of the Hub cache, the offline error, push), and the checkpoint check."""

import json
import warnings

import pytest
import torch

from cache2cache import C2CModel, Fuser, hub
from cache2cache.errors import C2CError
from cache2cache.models.loading import load_model

from .conftest import make_fuser, tiny


def _mock_hub_repo(cache, repo_id: str, fuser: Fuser, revision: str = "0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub's cache uses: models--owner--name/{refs/main, snapshots/<rev>/...}."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    fuser.save_pretrained(root / "snapshots" / revision)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)


def test_a_hub_repo_id_loads_from_the_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fuser = make_fuser(tiny("tiny-llama"), tiny("tiny-qwen2"))
    _mock_hub_repo(tmp_path, "someone/tiny-fuser", fuser)
    loaded = Fuser.from_pretrained("someone/tiny-fuser")
    for (name, a), (_, b) in zip(fuser.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(C2CError, match="not in the local Hub cache and HF_HUB_OFFLINE is set"):
        Fuser.from_pretrained("someone/missing-fuser")
    assert hub.looks_like_repo_id("a/b") and not hub.looks_like_repo_id("./a/b") and not hub.looks_like_repo_id("a")


def test_push_to_hub_uploads_the_fuser_folder(tmp_path, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, folder_path, repo_id, commit_message, allow_patterns):
            from pathlib import Path

            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["config"] = json.loads((Path(folder_path) / "config.json").read_text())
            return "https://hub/commit/1"

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    fuser = make_fuser(tiny("tiny-llama"), tiny("tiny-qwen2"))
    assert fuser.push_to_hub("me/my-fuser", private=True, token="t") == "https://hub/commit/1"
    assert calls["repo"] == ("me/my-fuser", True, True) and calls["token"] == "t"
    assert {"config.json", "model.safetensors", "README.md"} <= set(calls["files"])
    assert calls["config"]["receiver"] == "tiny-llama"


def test_a_fuser_refuses_another_checkpoint_with_the_same_name():
    from cache2cache.inference.factory import untrained_fuser

    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    fuser = untrained_fuser(r, s)
    assert fuser.config.receiver_fingerprint and fuser.config.sharer_fingerprint
    C2CModel(r, [s], [fuser])  # the checkpoints it records: fine
    other = load_model("tiny-llama")  # same name and shapes ...
    with torch.no_grad():
        other.model.model.layers[0].self_attn.q_proj.weight.add_(0.5)  # ... other weights
    with pytest.raises(C2CError, match="another checkpoint of its receiver tiny-llama"):
        C2CModel(other, [s], [fuser])


def test_a_config_from_a_newer_version_loads_with_a_warning(tmp_path):
    fuser = make_fuser(tiny("tiny-llama"), tiny("tiny-qwen2"))
    folder = fuser.save_pretrained(tmp_path / "f")
    config = json.loads((folder / "config.json").read_text())
    config["c2c_version"] = "99.1.0"
    (folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Fuser.from_pretrained(folder)
    assert any("newer than this" in str(w.message) for w in caught)


def test_shipped_fusers_load_by_name():
    from cache2cache.fuser.model import shipped_fusers

    names = shipped_fusers()
    assert "smollm2-135m-from-qwen2.5-coder-1.5b" in names
    assert Fuser.from_pretrained(names[0]).config.receiver == "SmolLM2-135M-Instruct"
    with pytest.raises(C2CError, match="not found"):
        Fuser.from_pretrained("no-such-shipped-fuser")


def test_shipped_translators_load_by_name_and_serve_their_pair_unasked():
    from cache2cache.translation.translator import Translator, shipped_for, shipped_translators

    names = shipped_translators()
    assert {"smollm2-135m-from-qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b-from-qwen2.5-coder-1.5b"} <= set(names)
    for name in names:
        config = Translator.from_pretrained(name).config
        assert shipped_for(config.receiver, config.sharer).name == name


def _saved_model(folder, name="tiny-llama"):
    m = tiny(name)
    m.model.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)
    return m


def test_a_model_loads_from_a_plain_folder_and_from_a_hub_repo_id_offline(tmp_path, monkeypatch):
    """The same weights whichever way they are named; hub ids go through the Hub cache (mocked here), so offline
    mode and an unreachable Hub fail at once with one line."""
    m = _saved_model(tmp_path / "plain")
    ids = m.tokenizer("The same logits", return_tensors="pt")["input_ids"]
    want = m.model(ids).logits
    assert torch.equal(load_model(str(tmp_path / "plain"), dtype="float32").model(ids).logits, want)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / ("ab" * 20)
    _saved_model(snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("ab" * 20)
    hub_model = load_model("someone/tiny", dtype="float32")
    assert hub_model.name == "someone/tiny" and torch.equal(hub_model.model(ids).logits, want)
    with pytest.raises(C2CError, match="model 'someone/absent' is not in the local Hub cache and HF_HUB_OFFLINE"):
        load_model("someone/absent")


def test_broken_model_folders_are_refused_without_unpickling(tmp_path):
    good = tmp_path / "good"
    m = _saved_model(good)
    cases = {}
    for name in ("truncated", "text", "pickled", "own-base"):
        cases[name] = tmp_path / name
        cases[name].mkdir()
        for f in good.iterdir():
            (cases[name] / f.name).write_bytes(f.read_bytes())
    weights = (good / "model.safetensors").read_bytes()
    (cases["truncated"] / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (cases["text"] / "model.safetensors").write_text("not weights")
    (cases["pickled"] / "model.safetensors").unlink()
    torch.save(m.model.state_dict(), cases["pickled"] / "pytorch_model.bin")
    own_base = {"base_model_name_or_path": str(cases["own-base"])}
    (cases["own-base"] / "adapter_config.json").write_text(json.dumps(own_base))
    unpickled = []
    real_load = torch.load
    torch.load = lambda *a, **k: unpickled.append(a) or real_load(*a, **k)
    try:
        for name, why in [("truncated", "corrupt safetensors"), ("text", "corrupt safetensors"),
                          ("pickled", "pickled weights"), ("own-base", "its own base")]:  # fmt: skip
            with pytest.raises(C2CError, match=why):
                load_model(str(cases[name]))
    finally:
        torch.load = real_load
    assert unpickled == []
