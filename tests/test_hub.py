"""Fusers as Hub repos (a local mock of the Hub cache, the offline error, push), and the checkpoint check."""

import json
import warnings

import pytest
import torch

from cache2cache import C2CModel, Fuser
from cache2cache.errors import C2CError
from cache2cache.fuser import hub
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
