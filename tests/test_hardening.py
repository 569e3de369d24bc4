"""Bad settings fail before any work, nothing the user did not ask to replace is destroyed, a diverging run stops
with its last good checkpoint, and folder writes swap atomically."""

import json
import math
from pathlib import Path

import pytest

from cache2cache import GenerateOptions
from cache2cache.atomic import replace_dir
from cache2cache.cli.main import main
from cache2cache.errors import C2CError
from cache2cache.training.config import load_config
from cache2cache.training.plots import read_metrics
from cache2cache.training.recipe import FuserTrainer

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")


def _cli(capsys, *argv):
    code = main(list(argv))
    _, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize("setting", ["grad_clip=-1", "grad_clip=0", "lr=nan", "lr=inf", "gate_lr_mult=nan",
                                     "weight_decay=-0.1", "option_temperature=0", "min_lr_ratio=nan",
                                     "option_loss_weight=-1", "mismatch_loss_weight=-1", "mismatch_loss_weight=nan"])
def test_bad_numbers_are_refused_before_any_model_loads(capsys, tmp_path, setting):
    code, err = _cli(capsys, "train", TINY, setting, f"out_dir={tmp_path / 'run'}")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_training_into_an_existing_run_is_refused_unless_asked(capsys, tmp_path):
    run = tmp_path / "run"
    assert _cli(capsys, "train", TINY, "max_steps=2", f"out_dir={run}")[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    code, err = _cli(capsys, "train", TINY, "max_steps=2", f"out_dir={run}")
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # untouched
    assert _cli(capsys, "train", TINY, "max_steps=2", f"out_dir={run}", "--overwrite")[0] == 0
    steps = [m["step"] for m in read_metrics(run / "metrics.jsonl") if m["kind"] == "train"]
    assert steps == [1, 2]  # a fresh log, not a second run appended to the first
    (tmp_path / "file").write_text("x")
    code, err = _cli(capsys, "train", TINY, f"out_dir={tmp_path / 'file'}")
    assert code == 2 and "not a folder" in err


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = load_config(TINY, [f"out_dir={tmp_path / 'run'}", "max_steps=8", "save_every=2"])
    trainer = FuserTrainer(cfg)
    trainer.setup()
    real = FuserTrainer.loss_sum

    def poisoned(self, tb):
        sums = real(self, tb)
        if self.step >= 5 and self.fuser.training:
            sums.ce = sums.ce * math.nan
        return sums

    monkeypatch.setattr(FuserTrainer, "loss_sum", poisoned)
    with pytest.raises(C2CError, match="not finite"):
        trainer.train()
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-0000004"
    assert not (tmp_path / "run" / "fuser").exists()  # no broken fuser saved


def test_a_half_written_metrics_line_does_not_block_reading(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "train", "step": 1, "loss": 2.0}) + "\n" + '{"kind": "train", "st')
    assert read_metrics(path) == [{"kind": "train", "step": 1, "loss": 2.0}]


def test_folder_replacement_keeps_the_old_one_until_the_new_one_is_in(tmp_path):
    target, new = tmp_path / "fuser", tmp_path / ".fuser.tmp"
    target.mkdir()
    (target / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    replace_dir(new, target)
    assert (target / "a").read_text() == "new" and not new.exists()
    assert not (tmp_path / ".fuser.old").exists()


def test_nan_sampling_settings_are_refused():
    with pytest.raises(C2CError, match="finite"):
        GenerateOptions(temperature=math.nan)
    with pytest.raises(C2CError, match="finite"):
        GenerateOptions(top_p=math.nan)


def test_reuse_finetune_refuses_a_non_empty_folder(capsys, tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, err = _cli(capsys, "reuse", "finetune", "--base", "tiny-llama", "--out", str(out))
    assert code == 2 and "--overwrite" in err
    assert (out / "precious.txt").read_text() == "keep me"


def test_the_cli_shows_our_warnings_and_hides_other_libraries(tmp_path):
    """`c2c` quiets transformers' and torch's warnings, never cache2cache's own: a fuser config with keys this
    version does not know must say so."""
    import subprocess
    import sys

    from .conftest import make_fuser, tiny

    fuser_dir = tmp_path / "fuser"
    make_fuser(tiny("tiny-llama"), tiny("tiny-qwen2")).save_pretrained(fuser_dir)
    config = json.loads((fuser_dir / "config.json").read_text())
    (fuser_dir / "config.json").write_text(json.dumps({**config, "from_the_future": 1}))
    run = subprocess.run([sys.executable, "-m", "cache2cache.cli.main", "generate", "--receiver", "tiny-llama",
                          "--sharer", "tiny-qwen2", "--fuser", str(fuser_dir), "--prompt", "hi", "--max-new-tokens",
                          "2", "--device", "cpu"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "unknown fuser config keys ['from_the_future']" in run.stderr
    assert "generation flags" not in run.stderr and "Traceback" not in run.stderr
