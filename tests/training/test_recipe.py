"""The training recipe on tiny models: it learns, resumes exactly, and runs data-parallel on 2 CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cache2cache import Fuser
from cache2cache.errors import C2CError
from cache2cache.training.config import load_config
from cache2cache.training.plots import read_metrics
from cache2cache.training.recipe import FuserTrainer
from cache2cache.training.schedule import lr_at, temperature_at

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.toml"


def _train(out_dir, *overrides, resume=None):
    cfg = load_config(TINY, [f"out_dir={out_dir}", *overrides])
    trainer = FuserTrainer(cfg, resume=resume)
    trainer.setup()
    try:
        return trainer.train()
    finally:
        trainer.cleanup()


def _losses(out_dir):
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["kind"], r.get("loss", r.get("val_loss"))) for r in rows]


def test_training_lowers_the_loss_and_writes_every_output(tmp_path):
    summary = _train(tmp_path / "run", "max_steps=16", "lr=3e-3")
    losses = [loss for _, kind, loss in _losses(tmp_path / "run") if kind == "train"]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # it learns
    for name in ("metrics.jsonl", "loss.png", "gates.png", "summary.json", "train_config.json", "latest"):
        assert (tmp_path / "run" / name).is_file(), name
    assert len(list((tmp_path / "run").glob("checkpoint-*"))) == 3  # keep_last
    fuser = Fuser.from_pretrained(summary["fuser_dir"])
    assert fuser.config.receiver == "tiny-llama" and fuser.config.sharer == "tiny-qwen2"
    assert summary["data"].endswith("skipped: 1 invalid JSON line, 1 no assistant turn")


def test_gate_lr_mult_lets_gates_move_on_short_runs(tmp_path):
    """At the base lr a gate logit moves at most ~lr per step; with gate_lr_mult it can select layers early."""

    def moved(run, *extra):
        summary = _train(tmp_path / run, "max_steps=6", "lr=1e-3", "save_every=100", *extra)
        logits = Fuser.from_pretrained(summary["fuser_dir"]).gate_logits().values()
        return max(abs(x - 1.0) for pair in logits for x in pair)  # gate_init is 1.0

    slow, fast = moved("slow"), moved("fast", "gate_lr_mult=100")
    assert slow <= 6 * 1e-3 * 1.05 and fast > 10 * slow
    with pytest.raises(C2CError, match="gate_lr_mult"):  # its optimizer has no separate gate group to resume
        _train(tmp_path / "slow", "max_steps=8", "gate_lr_mult=100", resume=tmp_path / "slow")
    with pytest.raises(C2CError, match="gate_lr_mult"):
        load_config(TINY, ["gate_lr_mult=0"])


def test_interrupted_then_resumed_run_reproduces_the_loss_curve(tmp_path, monkeypatch):
    _train(tmp_path / "straight")

    original = FuserTrainer._log

    def crash_at_step_10(self, record):
        original(self, record)
        if record.get("kind") == "train" and record["step"] == 10:
            raise KeyboardInterrupt  # killed between checkpoints (save_every=4: last one at step 8)

    monkeypatch.setattr(FuserTrainer, "_log", crash_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed")
    monkeypatch.setattr(FuserTrainer, "_log", original)
    assert (tmp_path / "resumed" / "latest").read_text().strip() == "checkpoint-0000008"
    _train(tmp_path / "resumed", resume=tmp_path / "resumed")
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert [(s, k) for s, k, _ in straight] == [(s, k) for s, k, _ in resumed]
    for (_, _, a), (_, _, b) in zip(straight, resumed):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    a = Fuser.from_pretrained(tmp_path / "straight" / "fuser").state_dict()
    b = Fuser.from_pretrained(tmp_path / "resumed" / "fuser").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_two_processes_give_the_same_result_as_one(tmp_path):
    """torchrun with 2 processes (DDP over gloo) reproduces 1 process with the same global batch: losses, every
    loss term (the mismatch term runs the fuser twice per micro-batch) and the final fuser; and both exit (a
    teardown in the wrong order used to hang the process at exit)."""
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"question": f"Which number comes after {i}?", "choices": [str(i + 1), str(i + 7),
                                      "never"], "answer": i % 2}) + "\n" for i in range(40)))  # fmt: skip
    args = ["train", str(TINY), "max_steps=4", "batch_size=4", "micro_batch_size=2", "save_every=100",
            f"data={ROOT / 'examples' / 'tiny_chat.jsonl'}:1,{mc}:1", "option_loss_weight=1", "mismatch_loss_weight=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    one = subprocess.run([sys.executable, "-m", "cache2cache.cli.main", *args, f"out_dir={tmp_path / 'one'}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "cache2cache.cli.main", *args, f"out_dir={tmp_path / 'two'}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [(s, k) for s, k, _ in a] == [(s, k) for s, k, _ in b]
    for (_, _, x), (_, _, y) in zip(a, b):
        assert x == pytest.approx(y, rel=1e-5)
    terms = [[m.get(k, -1.0) for m in read_metrics(tmp_path / run / "metrics.jsonl") if m["kind"] == "train"
              for k in ("option_loss", "mismatch_loss")] for run in ("one", "two")]  # fmt: skip
    assert terms[0] == pytest.approx(terms[1], rel=1e-5) and max(terms[0][1::2]) > 0
    fa = Fuser.from_pretrained(tmp_path / "one" / "fuser").state_dict()
    fb = Fuser.from_pretrained(tmp_path / "two" / "fuser").state_dict()
    assert all(torch.allclose(fa[k], fb[k], atol=1e-5) for k in fa)


def test_cli_resume_continues_in_the_moved_run_folder(tmp_path, capsys):
    from cache2cache.cli.main import main

    assert main(["train", str(TINY), f"out_dir={tmp_path / 'a'}", "max_steps=4", "save_every=2", "--json"]) == 0
    (tmp_path / "a").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "moved"), "max_steps=6", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 6 and summary["fuser_dir"] == str(tmp_path / "moved" / "fuser")
    steps = [s for s, kind, _ in _losses(tmp_path / "moved") if kind == "train"]
    assert steps == [1, 2, 3, 4, 5, 6] and not (tmp_path / "a").exists()


def test_schedules():
    cfg = load_config(None, ["lr=1.0", "warmup_steps=10", "min_lr_ratio=0.1"])
    assert lr_at(cfg, 0, 100) == pytest.approx(0.1) and lr_at(cfg, 9, 100) == pytest.approx(1.0)
    assert lr_at(cfg, 100, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 55, 100) == pytest.approx(0.55)  # half way through the cosine
    assert temperature_at(cfg, 0, 100) == 1.0 and temperature_at(cfg, 99, 100) == pytest.approx(0.05)


@pytest.mark.parametrize("overrides,match", [
    (["batch_size=0"], "at least 1"), (["lr=fast"], "expected float"), (["nope=1"], "unknown config key"),
    (["seed"], "not key=value"), (["autocast_bf16=maybe"], "expected bool"),
])
def test_bad_config_is_refused(overrides, match):
    with pytest.raises(C2CError, match=match):
        load_config(TINY, overrides)


def test_data_and_batch_errors(tmp_path):
    with pytest.raises(C2CError, match="not found"):
        _train(tmp_path / "r", "data=/no/such.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n[1, 2]\n")
    with pytest.raises(C2CError, match="no usable conversations"):
        _train(tmp_path / "r", f"data={bad}")
    with pytest.raises(C2CError, match="multiple of processes"):
        _train(tmp_path / "r", "batch_size=3")


def test_a_run_with_relative_paths_resumes_from_any_directory(tmp_path, monkeypatch):
    """tiny.toml names its data relative to the repository; the saved config holds absolute paths, so the run
    resumes from elsewhere."""
    from cache2cache.cli.main import main

    monkeypatch.chdir(ROOT)
    assert main(["train", str(TINY), f"out_dir={tmp_path / 'run'}", "max_steps=4", "save_every=2", "--json"]) == 0
    saved = json.loads((tmp_path / "run" / "checkpoint-0000004" / "train_config.json").read_text())
    assert saved["data"] == str(ROOT / "examples" / "tiny_chat.jsonl")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", "run", "max_steps=6", "--json"]) == 0
    assert [s for s, kind, _ in _losses(tmp_path / "run") if kind == "train"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("damage", ["optimizer.safetensors", "fuser/model.safetensors", "trainer_state.json"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    import shutil

    from cache2cache.training.checkpoint import load_checkpoint

    _train(tmp_path / "straight", "max_steps=6", "save_every=2")
    shutil.copytree(tmp_path / "straight", tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoint-0000006")  # as if killed after step 4's checkpoint ...
    (tmp_path / "run" / "latest").write_text("checkpoint-0000004\n")
    (tmp_path / "run" / "checkpoint-0000004" / damage).write_bytes(b"\x00garbage")  # ... which is damaged
    with caplog.at_level("WARNING"):
        _train(tmp_path / "run", "max_steps=6", "save_every=2", resume=tmp_path / "run")
    assert "resuming from the previous intact one, checkpoint-0000002" in caplog.text
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "run")  # steps 3-6 retrained from 2
    assert [r[:2] for r in resumed] == [r[:2] for r in straight]
    assert [r[2] for r in resumed] == pytest.approx([r[2] for r in straight], rel=1e-6)
    (tmp_path / "run" / "checkpoint-0000006" / "optimizer.json").write_text("{")
    with pytest.raises(C2CError, match="corrupt checkpoint"):  # a checkpoint named explicitly: no fallback
        load_checkpoint(tmp_path / "run" / "checkpoint-0000006")
