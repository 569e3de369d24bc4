"""The CLI's success and error paths. Errors must be one line on stderr, exit 2, and no traceback."""

import json
import subprocess
import sys

from cache2cache.cli.main import main

from .conftest import make_fuser, tiny

PAIR = ["--receiver", "tiny-llama", "--sharer", "tiny-qwen2"]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_json_lists_the_catalog(capsys):
    code, out, _ = _run(capsys, "models", "--json")
    names = {row["name"] for row in json.loads(out)}
    assert code == 0
    assert {"SmolLM2-135M-Instruct", "Gemma-3-270M", "Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5-Coder-1.5B-Instruct",
            "tiny-llama", "tiny-qwen2", "tiny-gemma3"} <= names


def test_generate_json_has_texts_counts_and_timings(capsys):
    code, out, _ = _run(capsys, "generate", *PAIR, "--prompt", "hello", "--prompt", "what is 2+2?",
                        "--max-new-tokens", "4", "--compare", "--json")
    assert code == 0
    data = json.loads(out)
    assert [o["mode"] for o in data["outputs"]] == ["receiver", "sharer", "t2t", "c2c"]
    out = {o["mode"]: o for o in data["outputs"]}
    c2c, t2t = out["c2c"], out["t2t"]
    assert len(c2c["results"]) == 2 and all(1 <= r["new_tokens"] <= 4 for r in c2c["results"])
    assert set(c2c["timings"]) == {"t2t_sharer_s", "sharer_prefill_s", "fuse_s", "receiver_prefill_s", "decode_s",
                                   "total_s"}  # fmt: skip
    assert c2c["timings"]["t2t_sharer_s"] == 0 and t2t["timings"]["t2t_sharer_s"] > 0
    # T2T's receiver reads the question plus the sharer's notes: a longer prompt than the receiver alone
    assert all(t["prompt_tokens"] > r["prompt_tokens"] for t, r in zip(t2t["results"], out["receiver"]["results"]))
    assert data["fusers"] == [{"path": None, "untrained": True}]
    # Bytes that crossed for the two prompts: none alone; t2t's notes; c2c the sharer's cache of both prompts
    notes = sum(len(r["notes"].encode()) for r in t2t["results"])
    assert out["receiver"]["wire_bytes"] == out["sharer"]["wire_bytes"] == 0 and t2t["wire_bytes"] == notes > 0
    assert c2c["wire_bytes"] > notes


def test_generate_with_a_saved_fuser_and_two_sharers(capsys, tmp_path):
    r, s1, s2 = tiny("tiny-llama"), tiny("tiny-qwen2"), tiny("tiny-gemma3")
    make_fuser(r, s1).save_pretrained(tmp_path / "f1")
    make_fuser(r, s2).save_pretrained(tmp_path / "f2")
    code, out, _ = _run(capsys, "generate", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--sharer",
                        "tiny-gemma3", "--fuser", str(tmp_path / "f1"), "--fuser", str(tmp_path / "f2"),
                        "--prompt", "hi", "--max-new-tokens", "3", "--json")
    assert code == 0 and json.loads(out)["sharers"] == ["tiny-qwen2", "tiny-gemma3"]


def test_stream_prints_text(capsys):
    code, out, _ = _run(capsys, "generate", *PAIR, "--prompt", "hi", "--max-new-tokens", "3", "--stream")
    assert code == 0
    _, plain, _ = _run(capsys, "generate", *PAIR, "--prompt", "hi", "--max-new-tokens", "3", "--json")
    assert out == json.loads(plain)["outputs"][0]["results"][0]["text"] + "\n"  # streamed == generated


def _error_cases(tmp_path):
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    good = make_fuser(r, s).save_pretrained(tmp_path / "good")
    other = make_fuser(tiny("tiny-gemma3"), s).save_pretrained(tmp_path / "other")
    corrupt = make_fuser(r, s).save_pretrained(tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 10)
    return {
        "unknown model": (["generate", "--receiver", "no-such-model", "--prompt", "x"], "unknown model"),
        "missing fuser": (["generate", *PAIR, "--fuser", str(tmp_path / "nope"), "--prompt", "x"], "not found"),
        "corrupt fuser": (["generate", *PAIR, "--fuser", str(corrupt), "--prompt", "x"], "corrupt"),
        "wrong pair": (["generate", *PAIR, "--fuser", str(other), "--prompt", "x"], "trained for"),
        "fuser count": (
            ["generate", *PAIR, "--fuser", str(good), "--fuser", str(good), "--prompt", "x"],
            "one --fuser",
        ),
        "empty prompt": (["generate", *PAIR, "--prompt", "  "], "empty"),
        "no prompt": (["generate", *PAIR], "at least one --prompt"),
        "too long": (["generate", *PAIR, "--prompt", "word " * 1200], "exceeds"),
        "bad number": (["generate", *PAIR, "--prompt", "x", "--max-new-tokens", "ten"], "whole number"),
        "zero tokens": (["generate", *PAIR, "--prompt", "x", "--max-new-tokens", "0"], "at least 1"),
        "bad temperature": (["generate", *PAIR, "--prompt", "x", "--sample", "--temperature", "-1"], "temperature"),
        "bad dtype": (["generate", *PAIR, "--prompt", "x", "--dtype", "int3"], "dtype"),
        "bad layer map": (["generate", *PAIR, "--prompt", "x", "--layer-alignment", "9:9"], "out of range"),
        "pull tiny": (["models", "pull", "tiny-llama"], "nothing to pull"),
        "pull unknown": (["models", "pull", "gpt-5"], "unknown model"),
        "prompt file": (["generate", *PAIR, "--prompt-file", str(tmp_path / "none.txt")], "no such file"),
    }


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse rejects bad values before main() runs the command
        return e.code


def test_error_paths_exit_non_zero_with_one_line(capsys, tmp_path):
    for name, (argv, needle) in _error_cases(tmp_path).items():
        code = _exit_code(argv)
        _, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if "error" in line]
        assert code == 2, name
        assert len(lines) == 1 and needle in lines[0], (name, err)
        assert "Traceback" not in err, name


def test_a_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cache2cache.cli.main",
            "generate",
            *PAIR,
            "--fuser",
            str(tmp_path / "missing"),
            "--prompt",
            "x",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "fuser directory not found" in proc.stderr


def test_help_starts_without_torch():
    """`c2c --help` imports no subcommand module, so neither torch nor transformers (issue 16: start-up time)."""
    code = ("import sys; from cache2cache.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]" and "serve" in out.stdout
