"""The LoRA fine-tune that makes a same-base partner: it trains, saves only safetensors, and loads merged as a
model that shares caches with its base."""

import json
from pathlib import Path

import pytest
import torch

from cache2cache.cli.main import main
from cache2cache.errors import C2CError
from cache2cache.models.catalog import ADAPTERS, ASSETS, find
from cache2cache.models.loading import load_model
from cache2cache.reuse.compat import check_same_base
from cache2cache.reuse.finetune import LoraRecipe, finetune_lora

from ..conftest import tiny

TASK = Path(__file__).resolve().parents[2] / "examples" / "tiny_mc.jsonl"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "adapter"
    recipe = LoraRecipe(base="tiny-llama", task=f"jsonl:{TASK}", split="all", steps=16, batch_size=2, lr=1e-2)
    log = finetune_lora(recipe, out)
    return out, log


def test_adapter_is_written_as_safetensors_with_its_log(adapter):
    out, log = adapter
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "finetune.json"]  # fmt: skip
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llama"
    losses = log["losses"]
    assert len(losses) == 16 and log["trainable_params"] > 0
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4  # it learns the tiny task (5 questions, seen ~6 times)


def test_merged_adapter_changes_the_model_and_shares_its_cache_shape(adapter):
    out, _ = adapter
    base, tuned = tiny("tiny-llama"), load_model(str(out))
    check_same_base(base, tuned)
    ids = torch.tensor([[1, 5, 9, 12, 20]])
    a, b = base.model(input_ids=ids).logits, tuned.model(input_ids=ids).logits
    assert not torch.allclose(a, b)


def test_merged_equals_the_unmerged_peft_model(adapter):
    from peft import PeftModel

    out, _ = adapter
    unmerged = PeftModel.from_pretrained(load_model("tiny-llama").model, str(out)).eval()
    merged = load_model(str(out)).model
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    torch.testing.assert_close(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_adapter_without_safetensors_is_refused(adapter, tmp_path):
    out, _ = adapter
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((out / "adapter_config.json").read_text())
    with pytest.raises(C2CError, match="adapter_model.safetensors"):
        load_model(str(bad))


def test_shipped_adapters_are_in_the_catalog():
    for a in ADAPTERS.values():
        entry = find(a.name)
        assert entry.kind == "adapter" and entry.adapter == ASSETS / a.path
        assert (entry.adapter / "adapter_model.safetensors").is_file()


def test_cli_finetune_reports_bad_task(capsys):
    assert main(["reuse", "finetune", "--task", "nope", "--out", "x"]) == 2
    assert "unknown task" in capsys.readouterr().err
