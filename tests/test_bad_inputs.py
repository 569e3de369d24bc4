"""A table of bad inputs over every subcommand (tiny models): each must exit non-zero with one line on stderr,
no traceback, and leave every file that existed before untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cache2cache.cli.main import main

from .conftest import make_fuser, tiny

T = ["--receiver", "tiny-llama", "--sharer", "tiny-qwen2"]  # + a trained-looking fuser where one is needed (below)
AB = ["--a", "tiny-llama", "--b", "tiny-llama-ft"]


def _cases(w: Path) -> list[tuple[str, list[str]]]:
    """(name, argv); `w` is a workspace holding files the cases may point at (and must not change)."""
    d = str(w)
    return [
        # the top level
        ("unknown command", ["fly"]),
        ("no command", []),
        ("unknown flag", ["--fly"]),
        # models
        ("models pull unknown", ["models", "pull", "no-such-model"]),
        ("models info unknown", ["models", "info", "no-such-model"]),
        ("models bad flag", ["models", "--nope"]),
        ("models pull tiny", ["models", "pull", "tiny-llama"]),
        # generate
        ("generate no prompt", ["generate", *T]),
        ("generate empty prompt", ["generate", *T, "--prompt", "   "]),
        ("generate missing prompt file", ["generate", *T, "--prompt-file", f"{d}/nope.txt"]),
        ("generate prompt file is a dir", ["generate", *T, "--prompt-file", d]),
        ("generate binary prompt file", ["generate", *T, "--prompt-file", f"{d}/binary.bin"]),
        ("generate empty prompt file", ["generate", *T, "--prompt-file", f"{d}/empty.txt"]),
        ("generate unknown receiver", ["generate", "--receiver", "no-such", "--sharer", "tiny-qwen2", "--prompt", "x"]),
        ("generate unknown sharer", ["generate", "--receiver", "tiny-llama", "--sharer", "no-such", "--prompt", "x"]),
        ("generate bad mode", [*["generate"], *T, "--prompt", "x", "--mode", "telepathy"]),
        ("generate zero tokens", ["generate", *T, "--prompt", "x", "--max-new-tokens", "0"]),
        ("generate negative tokens", ["generate", *T, "--prompt", "x", "--max-new-tokens", "-5"]),
        ("generate text tokens", ["generate", *T, "--prompt", "x", "--max-new-tokens", "many"]),
        ("generate nan temperature", ["generate", *T, "--prompt", "x", "--sample", "--temperature", "nan"]),
        ("generate zero temperature", ["generate", *T, "--prompt", "x", "--sample", "--temperature", "0"]),
        ("generate negative temperature", ["generate", *T, "--prompt", "x", "--sample", "--temperature", "-1"]),
        ("generate inf temperature", ["generate", *T, "--prompt", "x", "--sample", "--temperature", "inf"]),
        ("generate top_p zero", ["generate", *T, "--prompt", "x", "--sample", "--top-p", "0"]),
        ("generate top_p two", ["generate", *T, "--prompt", "x", "--sample", "--top-p", "2"]),
        ("generate top_p nan", ["generate", *T, "--prompt", "x", "--sample", "--top-p", "nan"]),
        ("generate negative top_k", ["generate", *T, "--prompt", "x", "--sample", "--top-k", "-3"]),
        ("generate text seed", ["generate", *T, "--prompt", "x", "--seed", "abc"]),
        ("generate zero t2t tokens", ["generate", *T, "--prompt", "x", "--mode", "t2t", "--t2t-tokens", "0"]),
        ("generate stream two prompts", ["generate", *T, "--prompt", "a", "--prompt", "b", "--stream"]),
        ("generate stream json", ["generate", *T, "--prompt", "a", "--stream", "--json"]),
        ("generate stream t2t", ["generate", *T, "--prompt", "a", "--stream", "--mode", "t2t"]),
        ("generate fuser missing", ["generate", *T, "--prompt", "x", "--fuser", f"{d}/no-fuser"]),
        ("generate fuser is a file", ["generate", *T, "--prompt", "x", "--fuser", f"{d}/empty.txt"]),
        ("generate fuser corrupt config", ["generate", *T, "--prompt", "x", "--fuser", f"{d}/bad-config-fuser"]),
        ("generate fuser no weights", ["generate", *T, "--prompt", "x", "--fuser", f"{d}/no-weights-fuser"]),
        ("generate fuser wrong pair", ["generate", "--receiver", "tiny-llama", "--sharer", "tiny-gemma3", "--prompt",
                                       "x", "--fuser", f"{d}/fuser"]),
        ("generate two fusers one sharer", ["generate", *T, "--prompt", "x", "--fuser", f"{d}/fuser", "--fuser",
                                            f"{d}/fuser"]),
        ("generate bad dtype", ["generate", *T, "--prompt", "x", "--dtype", "int3"]),
        ("generate cuda on cpu", ["generate", *T, "--prompt", "x", "--device", "cuda"]),
        ("generate unknown device", ["generate", *T, "--prompt", "x", "--device", "tpu9"]),
        ("generate bad preset", ["generate", *T, "--prompt", "x", "--preset", "huge"]),
        ("generate bad layer alignment", ["generate", *T, "--prompt", "x", "--layer-alignment", "sideways"]),
        ("generate layer map out of range", ["generate", *T, "--prompt", "x", "--layer-alignment", "0:99"]),
        ("generate bad token alignment", ["generate", *T, "--prompt", "x", "--token-alignment", "psychic"]),
        ("generate over-long prompt", ["generate", *T, "--prompt", "word " * 3000]),
        ("generate model file missing", ["generate", "--receiver", f"{d}/nope.gguf", "--prompt", "x"]),
        ("generate model dir empty", ["generate", "--receiver", f"{d}/emptydir", "--prompt", "x"]),
        # train
        ("train missing config", ["train", f"{d}/nope.toml"]),
        ("train bad toml", ["train", f"{d}/bad.toml"]),
        ("train two configs", ["train", f"{d}/good.toml", f"{d}/good.toml"]),
        ("train unknown key", ["train", "fly=1", f"out_dir={d}/run-a"]),
        ("train not key value", ["train", "max_steps"]),
        ("train bad int", ["train", "max_steps=lots", f"out_dir={d}/run-b"]),
        ("train negative steps", ["train", "max_steps=-1", f"out_dir={d}/run-c"]),
        ("train zero batch", ["train", "batch_size=0", f"out_dir={d}/run-d"]),
        ("train nan lr", ["train", "lr=nan", f"out_dir={d}/run-e"]),
        ("train negative lr", ["train", "lr=-0.1", f"out_dir={d}/run-f"]),
        ("train negative clip", ["train", "grad_clip=-1", f"out_dir={d}/run-g"]),
        ("train nan gate mult", ["train", "gate_lr_mult=nan", f"out_dir={d}/run-h"]),
        ("train bad temperature order", ["train", "temperature_start=0.1", "temperature_end=1", f"out_dir={d}/run-i"]),
        ("train min lr ratio", ["train", "min_lr_ratio=2", f"out_dir={d}/run-j"]),
        ("train bad bool", ["train", "autocast_bf16=maybe", f"out_dir={d}/run-k"]),
        ("train batch not multiple", [*["train", f"{d}/good.toml"], "batch_size=3", "micro_batch_size=2",
                                      f"out_dir={d}/run-l"]),
        ("train missing data", ["train", f"{d}/good.toml", f"data={d}/nope.jsonl", f"out_dir={d}/run-m"]),
        ("train data is a text file", ["train", f"{d}/good.toml", f"data={d}/empty.txt", f"out_dir={d}/run-n"]),
        ("train data no usable rows", ["train", f"{d}/good.toml", f"data={d}/junk.jsonl", f"out_dir={d}/run-o"]),
        ("train mix with eval task", ["train", f"{d}/good.toml", "data=sharegpt:0.5,arc_easy:0.5",
                                      f"out_dir={d}/run-p"]),
        ("train mix zero weight", ["train", f"{d}/good.toml", "data=sciq:0", f"out_dir={d}/run-q"]),
        ("train mix duplicate", ["train", f"{d}/good.toml", "data=sciq:1,sciq:2", f"out_dir={d}/run-r"]),
        ("train into a file", ["train", f"{d}/good.toml", f"out_dir={d}/empty.txt"]),
        ("train into existing run", ["train", f"{d}/good.toml", f"out_dir={d}/existing-run"]),
        ("train resume missing", ["train", "--resume", f"{d}/no-run"]),
        ("train resume not a run", ["train", "--resume", f"{d}/emptydir"]),
        ("train val too large", ["train", f"{d}/good.toml", "val_size=10000", f"out_dir={d}/run-s"]),
        ("train unknown receiver", ["train", f"{d}/good.toml", "receiver=no-such", f"out_dir={d}/run-t"]),
        ("train bad preset", ["train", f"{d}/good.toml", "preset=huge", f"out_dir={d}/run-u"]),
        ("train bad init fuser", ["train", f"{d}/good.toml", f"init_fuser={d}/no-fuser", f"out_dir={d}/run-v"]),
        ("train option temperature zero", ["train", "option_temperature=0", f"out_dir={d}/run-w"]),
        ("train cuda on cpu", ["train", f"{d}/good.toml", "device=cuda:3", f"out_dir={d}/run-x"]),
        # eval
        ("eval unknown task", ["eval", *T, "--task", "no-such-task"]),
        ("eval unknown split", ["eval", *T, "--task", f"jsonl:{d}/tiny_mc.jsonl", "--split", "train"]),
        ("eval jsonl missing", ["eval", *T, "--task", f"jsonl:{d}/nope.jsonl", "--split", "all"]),
        ("eval jsonl malformed", ["eval", *T, "--task", f"jsonl:{d}/junk.jsonl", "--split", "all"]),
        ("eval unknown mode", ["eval", *T, "--task", f"jsonl:{d}/tiny_mc.jsonl", "--split", "all", "--modes", "x"]),
        ("eval empty modes", ["eval", *T, "--task", f"jsonl:{d}/tiny_mc.jsonl", "--split", "all", "--modes", ""]),
        ("eval bad method", ["eval", *T, "--method", "vibes"]),
        ("eval negative limit", ["eval", *T, "--task", f"jsonl:{d}/tiny_mc.jsonl", "--split", "all", "--limit", "-1"]),
        ("eval zero batch", ["eval", *T, "--task", f"jsonl:{d}/tiny_mc.jsonl", "--split", "all", "--batch-size", "0"]),
        ("eval out is a file", ["eval", *T, "--task", f"jsonl:{d}/tiny_mc.jsonl", "--split", "all", "--out",
                                f"{d}/empty.txt"]),
        ("eval close gates not fused", ["eval", *T, "--task", f"jsonl:{d}/tiny_mc.jsonl", "--split", "all",
                                        "--fuser", f"{d}/fuser", "--close-gates", "50"]),
        ("eval close gates bad list", ["eval", *T, "--close-gates", "a-b"]),
        ("eval unknown subject", ["eval", *T, "--task", "mmlu", "--split", "dev", "--subjects", "astrology"]),
        ("eval sharer mode no sharer", ["eval", "--receiver", "tiny-llama", "--task", f"jsonl:{d}/tiny_mc.jsonl",
                                        "--split", "all", "--modes", "c2c"]),
        # bench
        ("bench unknown mode", ["bench", *T, "--modes", "x"]),
        ("bench zero repeats", ["bench", *T, "--repeats", "0"]),
        ("bench bad batch sizes", ["bench", *T, "--batch-sizes", "1,a"]),
        ("bench huge batch", ["bench", *T, "--fuser", f"{d}/fuser", "--task", f"jsonl:{d}/tiny_mc.jsonl", "--split",
                              "all", "--batch-sizes", "100000"]),
        ("bench zero new tokens", ["bench", *T, "--new-tokens", "0"]),
        ("bench out is a folder", ["bench", *T, "--out", d]),
        # reuse
        ("reuse no action", ["reuse"]),
        ("reuse generate nothing", ["reuse", "generate", *AB]),
        ("reuse generate bad plan", ["reuse", "generate", *AB, "--prompt", "hi", "--plan", "9-99"]),
        ("reuse generate plan text", ["reuse", "generate", *AB, "--prompt", "hi", "--plan", "some"]),
        ("reuse generate missing capture", ["reuse", "generate", *AB, "--capture", f"{d}/nope.safetensors"]),
        ("reuse generate junk capture", ["reuse", "generate", *AB, "--capture", f"{d}/binary.bin"]),
        ("reuse different bases", ["reuse", "generate", "--a", "tiny-llama", "--b", "tiny-qwen2", "--prompt", "hi"]),
        ("reuse generate missing profile", ["reuse", "generate", *AB, "--prompt", "hi", "--profile", f"{d}/nope.json"]),
        ("reuse generate junk profile", ["reuse", "generate", *AB, "--prompt", "hi", "--profile", f"{d}/junk.jsonl"]),
        ("reuse profile bad budgets", ["reuse", "profile", *AB, "--budgets", "2,x", "--out", f"{d}/p.json"]),
        ("reuse profile zero limit", ["reuse", "profile", *AB, "--limit", "0", "--out", f"{d}/p.json"]),
        ("reuse eval missing profile", ["reuse", "eval", *AB, "--profile", f"{d}/nope.json"]),
        ("reuse finetune non-empty out", ["reuse", "finetune", "--base", "tiny-llama", "--out", d]),
        ("reuse finetune zero steps", ["reuse", "finetune", "--base", "tiny-llama", "--steps", "0", "--out",
                                       f"{d}/adapter"]),
        # serve (bad settings are refused before the server starts)
        ("serve bad port", ["serve", *T, "--port", "70000"]),
        ("serve text port", ["serve", *T, "--port", "http"]),
        ("serve bad wait", ["serve", *T, "--max-wait-ms", "-5"]),
        ("serve zero batch", ["serve", *T, "--max-batch", "0"]),
        ("serve bad sharer url", ["serve", *T, "--fuser", f"{d}/fuser", "--sharer-url", "ftp://x"]),
        ("serve remote sharer untrained", ["serve", *T, "--sharer-url", "http://127.0.0.1:9"]),
        # broken model folders and configs (session 6)
        ("model truncated weights", ["generate", "--receiver", f"{d}/model-truncated", "--sharer", "tiny-qwen2",
                                     "--prompt", "x"]),
        ("model text as weights", ["generate", "--receiver", f"{d}/model-text", "--sharer", "tiny-qwen2",
                                   "--prompt", "x"]),
        ("model pickled weights only", ["generate", "--receiver", f"{d}/model-pickled", "--sharer", "tiny-qwen2",
                                        "--prompt", "x"]),
        ("adapter based on itself", ["generate", "--receiver", f"{d}/model-own-base", "--sharer", "tiny-qwen2",
                                     "--prompt", "x"]),
        ("hub id offline", ["generate", "--receiver", "someone/not-cached", "--sharer", "tiny-qwen2", "--prompt", "x"]),
        ("fuser layer_map out of range", ["generate", *T, "--prompt", "x", "--fuser", f"{d}/layer-map-fuser"]),
        ("fuser missing geometry", ["generate", *T, "--prompt", "x", "--fuser", f"{d}/no-geometry-fuser"]),
        ("eval over a finished eval", ["eval", *T, "--task", f"jsonl:{d}/tiny_mc.jsonl", "--split", "all",
                                       "--out", f"{d}/finished-eval"]),
        ("train resume all checkpoints corrupt", ["train", "--resume", f"{d}/corrupt-run"]),
        # paths and JSON files of every kind, checked up front (session 8)
        ("cache dir is a file", ["models", "--cache-dir", f"{d}/empty.txt"]),
        ("pull into a file", ["models", "pull", "SmolLM2-135M-Instruct", "--cache-dir", f"{d}/empty.txt"]),
        ("generate cache dir is a file", ["generate", *T, "--prompt", "x", "--cache-dir", f"{d}/empty.txt"]),
        ("reuse profile of the wrong shape", ["reuse", "eval", *AB, "--profile", f"{d}/wrong-profile.json"]),
        ("reuse generate profile wrong shape", ["reuse", "generate", *AB, "--prompt", "hi", "--budget", "0.5",
                                                "--profile", f"{d}/wrong-profile.json"]),
        ("reuse profile out is a folder", ["reuse", "profile", *AB, "--out", d]),
        ("generate prompt file is a folder", ["generate", *T, "--prompt-file", d]),
        ("generate brief file missing", ["generate", *T, "--prompt", "x", "--brief-file", f"{d}/nope.txt"]),
        ("train resume under a file", ["train", "--resume", f"{d}/empty.txt/run"]),
        # translators (session 8)
        ("generate own layers out of range", ["generate", *T, "--prompt", "x", "--own-layers", "99"]),
        ("generate own-from out of range", ["generate", *T, "--prompt", "x", "--own-from", "99"]),
        ("fit entry layers not numbers", ["fit", *T, "--text", "sciq:2", "--entry-layers", "a,b"]),
        ("fit entry layer too deep", ["fit", *T, "--text", "sciq:2", "--refine", "0", "--entry-layers", "99"]),
        ("fit on evaluation text", ["fit", *T, "--text", "mmlu"]),
        ("fit unknown text", ["fit", *T, "--text", "novels"]),
        ("fit bad passage count", ["fit", *T, "--text", "sciq:-3"]),
        ("fit stats is a folder", ["fit", *T, "--text", "sciq:2", "--stats", d]),
        ("fit out is a file", ["fit", *T, "--text", "sciq:2", "--out", f"{d}/empty.txt"]),
        ("fit refine values without refining", ["fit", *T, "--text", "sciq:2", "--refine", "0", "--refine-values"]),
        ("fit distil without refinement passages", ["fit", *T, "--text", "sciq:2", "--refine", "0", "--distill", "5"]),
        ("fit negative refine steps", ["fit", *T, "--text", "sciq:2", "--refine-steps", "-1"]),
        ("fit negative distil top-k", ["fit", *T, "--text", "sciq:2", "--distill-top-k", "-3"]),
        ("fit entry window zero", ["fit", *T, "--text", "sciq:2", "--entry-window", "0"]),
        ("fit negative distil steps", ["fit", *T, "--text", "sciq:2", "--distill", "-1"]),
        ("fit bad features", ["fit", *T, "--key-features", "keys,colour"]),
        ("fit corrupt stats", ["fit", *T, "--text", "sciq:2", "--stats", f"{d}/binary.bin", "--out", f"{d}/tr-a"]),
        ("translator is a fuser", ["generate", *T, "--prompt", "x", "--translator", f"{d}/fuser"]),
        ("translator missing", ["generate", *T, "--prompt", "x", "--translator", f"{d}/no-translator"]),
        ("translated without a brief", ["generate", *T, "--prompt", "x", "--mode", "translated"]),
        ("translated without a translator", ["generate", *T, "--prompt", "x", "--mode", "translated",
                                             "--brief-file", f"{d}/tiny_mc.jsonl"]),
        ("eval translated without translator", ["eval", *T, "--task", f"jsonl:{d}/tiny_mc.jsonl", "--split", "all",
                                                "--modes", "translated"]),
        # cache keys (session 8)
        ("serve key file missing", ["serve", *T, "--cache-key-file", f"{d}/nope.key"]),
        ("serve key file junk", ["serve", *T, "--cache-key-file", f"{d}/junk.jsonl"]),
        ("serve key too short", ["serve", *T, "--cache-key-file", f"{d}/short.key"]),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("bad-inputs")
    (w / "empty.txt").write_text("")
    (w / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (w / "bad.toml").write_text("max_steps = = 3\n")
    (w / "good.toml").write_text(Path("configs/tiny.toml").read_text())
    (w / "junk.jsonl").write_text("{not json\n[1, 2]\n")
    (w / "tiny_mc.jsonl").write_text(Path("examples/tiny_mc.jsonl").read_text())
    (w / "emptydir").mkdir()
    (w / "wrong-profile.json").write_text(json.dumps({"plans": [1, 2, {"budget": "half"}]}))
    (w / "short.key").write_text('{"keys": {"a": "short"}}')
    (w / "existing-run").mkdir()
    (w / "existing-run" / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n')
    make_fuser(tiny("tiny-llama"), tiny("tiny-qwen2")).save_pretrained(w / "fuser")
    for name, edit in (("bad-config-fuser", "config"), ("no-weights-fuser", "weights")):
        make_fuser(tiny("tiny-llama"), tiny("tiny-qwen2")).save_pretrained(w / name)
        if edit == "config":
            (w / name / "config.json").write_text(json.dumps({"hidden_dim": "wide"}))
        else:
            (w / name / "model.safetensors").unlink()
    _broken_models(w)
    (w / "finished-eval").mkdir()
    (w / "finished-eval" / "summary.json").write_text("{}")
    (w / "corrupt-run" / "checkpoint-0000002").mkdir(parents=True)
    (w / "corrupt-run" / "checkpoint-0000002" / "trainer_state.json").write_text("{")
    return w


def _broken_models(w: Path) -> None:
    import torch

    m = tiny("tiny-llama")
    for name in ("model-truncated", "model-text", "model-pickled", "model-own-base"):
        m.model.save_pretrained(w / name)
        m.tokenizer.save_pretrained(w / name)
    weights = (w / "model-truncated" / "model.safetensors").read_bytes()
    (w / "model-truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (w / "model-text" / "model.safetensors").write_text("hello")
    (w / "model-pickled" / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, w / "model-pickled" / "pytorch_model.bin")
    (w / "model-own-base" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(w / "model-own-base")})
    )
    for name, edit in (
        ("layer-map-fuser", {"layer_map": [99, 99, 99, 99]}),
        ("no-geometry-fuser", {"sharer_geometry": {}}),
    ):
        make_fuser(tiny("tiny-llama"), tiny("tiny-qwen2")).save_pretrained(w / name)
        config = json.loads((w / name / "config.json").read_text())
        (w / name / "config.json").write_text(json.dumps({**config, **edit}))


def _snapshot(w: Path) -> dict[str, str]:
    return {
        str(p.relative_to(w)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(w.rglob("*")) if p.is_file()
    }


CASES = _cases(Path("{w}"))


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_bad_input_is_one_clean_line_and_destroys_nothing(name, workspace, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(workspace / "hub-cache"))
    argv = dict(_cases(workspace))[name]
    before = _snapshot(workspace)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors exit through SystemExit
        code = e.code
    _, err = capsys.readouterr()
    assert code not in (0, None), f"{name}: accepted (exit 0)"
    # progress bars (tqdm redraws on stderr) are not messages; the error must be the one line left
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "/s]" not in line]
    assert len(lines) == 1 and "Traceback" not in err, f"{name}: {err[-800:]}"
    assert _snapshot(workspace) == before, f"{name}: changed files that existed before"


def test_the_table_is_large_enough():
    assert len(CASES) >= 100
