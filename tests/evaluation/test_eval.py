"""Evaluation on tiny models: every mode and method runs, results are complete and deterministic, and a fuser
whose gates are all closed scores exactly like the receiver alone."""

import json
from pathlib import Path

import pytest
import torch

from cache2cache import C2CModel
from cache2cache.cli.main import main
from cache2cache.errors import C2CError
from cache2cache.evaluation.progress import choose_output
from cache2cache.evaluation.runner import (
    EvalConfig,
    Evaluator,
    paired,
    select_items,
    summarise,
    write_results,
)
from cache2cache.evaluation.scoring import (
    extract_letter,
    extract_number,
    mcnemar_exact,
    prompt_for,
    wilson_interval,
)
from cache2cache.evaluation.tasks import load_jsonl_task
from cache2cache.inference.answerers import answerer

from ..conftest import make_fuser, tiny

TASK = Path(__file__).resolve().parents[2] / "examples" / "tiny_mc.jsonl"


def _model(closed=False, sharer="tiny-gemma3"):
    r, s = tiny("tiny-llama"), tiny(sharer)
    fuser = make_fuser(r, s)
    if closed:
        fuser.close_gates([int(r) for r in fuser.layers])
    return C2CModel(r, [s], [fuser])


def _cfg(**kw):
    base = dict(task=f"jsonl:{TASK}", split="all", modes=["receiver", "sharer", "t2t", "c2c"], batch_size=2,
                t2t_tokens=6, gen_tokens=6)
    return EvalConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["letter", "cloze", "generate"])
def test_all_modes_and_methods_write_complete_results(tmp_path, method):
    cfg = _cfg(method=method)
    model = _model()
    items = select_items(cfg)
    records = Evaluator(model, cfg).run(items)
    assert len(records) == len(items) * 4
    summary = summarise(records, cfg, {"receiver": "tiny-llama"})
    write_results(tmp_path, records, summary)
    for name in ("records.jsonl", "summary.json", "results.md", "accuracy.png", "latency.png"):
        assert (tmp_path / name).stat().st_size > 0
    for mode, m in summary["modes"].items():
        assert m["n"] == len(items) and 0 <= m["ci95"][0] <= m["accuracy"] <= m["ci95"][1] <= 1
    assert len(summary["paired"]) == 6 and "Paired on the same questions" in (tmp_path / "results.md").read_text()
    assert f"{torch.backends.cpu.get_cpu_capability()} kernels" in summary["machine"]  # which CPU's bf16 kernels
    assert all((r["output"] is not None) == (method == "generate") for r in records)
    for r in records:  # cloze keeps each option's per-character log-probability: the prediction is its argmax
        assert (r["scores"] is not None) == (method == "cloze")
        if r["scores"] is not None:
            assert r["prediction"] == max(range(len(r["scores"])), key=r["scores"].__getitem__)
    t2t = [r for r in records if r["mode"] == "t2t"]
    assert all(r["notes"] is not None and r["latency_s"]["t2t_sharer_s"] > 0 for r in t2t)
    c2c = [r for r in records if r["mode"] == "c2c"]
    assert all(r["latency_s"]["sharer_prefill_s"] > 0 and r["latency_s"]["fuse_s"] > 0 for r in c2c)
    # Deterministic: the same run gives the same predictions.
    again = Evaluator(model, cfg).run(items)
    assert [r["prediction"] for r in again] == [r["prediction"] for r in records]


@pytest.mark.parametrize("method", ["letter", "cloze"])
def test_closed_gates_score_exactly_like_the_receiver(method):
    cfg = _cfg(method=method, modes=["receiver", "c2c"])
    model = _model(closed=True)
    items = select_items(cfg)
    ev = Evaluator(model, cfg)
    for batch in (items[:3], items[3:]):
        a = ev.score_batch(batch, "receiver")
        b = ev.score_batch(batch, "c2c")
        assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
    prompts = [[{"role": "user", "content": it.question}] for it in items]
    assert torch.equal(model.next_token_logits(prompts, "c2c"), model.next_token_logits(prompts, "receiver"))
    conts = [[" " + c for c in it.choices] for it in items]
    assert model.continuation_logprobs(prompts, conts, "c2c")[0] == model.continuation_logprobs(prompts, conts,
                                                                                                "receiver")[0]


def test_open_gates_change_scores():
    model = _model()
    items = select_items(_cfg())
    prompts = [[{"role": "user", "content": it.question}] for it in items]
    conts = [[" " + it.choices[0]] for it in items]
    a = model.continuation_logprobs(prompts, conts, "c2c")[0]
    b = model.continuation_logprobs(prompts, conts, "receiver")[0]
    assert max(abs(x[0] - y[0]) for x, y in zip(a, b)) > 1e-3


def test_options_share_one_prefill_and_score_like_separate_prompts():
    """Scoring all options from one copied cache gives what scoring each option after its own prefill gives."""
    model = _model()
    items = select_items(_cfg())[:3]
    prompts = [[{"role": "user", "content": it.question}] for it in items]
    options = [[" " + c for c in it.choices] for it in items]
    together, _ = model.continuation_logprobs(prompts, options, "c2c")
    for p, opts, got in zip(prompts, options, together):
        alone = [model.continuation_logprobs([p], [[o]], "c2c")[0][0][0] for o in opts]
        assert got == pytest.approx(alone, abs=1e-4)


def test_continuations_must_match_prompts():
    model = _model()
    with pytest.raises(C2CError, match="continuations"):
        model.continuation_logprobs(["a question"], [], "receiver")


def test_a_continuation_that_overflows_the_context_is_refused():
    model = _model()
    too_long = " word" * model.receiver.max_length
    with pytest.raises(C2CError, match="exceeds"):
        model.continuation_logprobs(["a question"], [[" yes", too_long]], "c2c")


def test_limit_is_a_seeded_sample():
    a = select_items(_cfg(limit=3, seed=1))
    b = select_items(_cfg(limit=3, seed=1))
    assert [i.id for i in a] == [i.id for i in b] and len(a) == 3


def test_extraction_and_interval():
    assert extract_letter("The answer is (C).", 4) == 2 and extract_letter("no idea", 4) is None
    assert extract_number("so 3 + 4 = 7. The answer is 1,200.") == "1200"
    assert extract_number("we get $18 in total") == "18" and extract_number("none") is None
    assert extract_number("so 7 steps. The answer is \\boxed{-200}. Step 2") == "-200"
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0


def test_malformed_task_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    for text, needle in [('{"question": "q", "choices": ["a"], "answer": 0}', "at least two"),
                         ('{"question": "q", "choices": ["a", "b"], "answer": 5}', "not a choice"),
                         ("not json", "malformed"), ('{"choices": ["a", "b"], "answer": 0}', "malformed")]:
        bad.write_text(text + "\n")
        with pytest.raises(C2CError, match=needle):
            load_jsonl_task(bad)
    with pytest.raises(C2CError, match="not found"):
        load_jsonl_task(tmp_path / "none.jsonl")


@pytest.mark.parametrize("argv,needle", [
    (["--task", "nope"], "unknown task"),
    (["--task", "jsonl:/no/file.jsonl", "--split", "all"], "not found"),
    (["--limit", "0"], "at least 1"),
    (["--modes", "receiver,telepathy"], "unknown or no mode"),
    (["--task", "arc_easy", "--split", "train"], "no split"),
])
def test_cli_errors(capsys, argv, needle):
    try:
        code = main(["eval", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", *argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err


def test_cli_eval_json(capsys, tmp_path):
    code = main(["eval", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--task", f"jsonl:{TASK}",
                 "--split", "all", "--modes", "receiver,c2c", "--out", str(tmp_path), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["modes"]) == {"receiver", "c2c"} and summary["models"]["receiver"] == "tiny-llama"


@pytest.mark.slow
def test_bundled_tasks_load():
    from cache2cache.evaluation.tasks import TASKS

    sizes = {(name, split): len(t.load(split)) for name, t in TASKS.items() for split in t.splits}
    assert sizes[("arc_challenge", "validation")] == 299 and sizes[("mmlu", "validation")] == 1531


def test_closing_a_gate_the_fuser_does_not_have_is_an_error():
    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    fuser = make_fuser(r, s)
    with pytest.raises(C2CError, match="not fused"):
        fuser.close_gates([99])


def test_mcnemar_exact():
    assert mcnemar_exact(1, 10) == pytest.approx(0.01171875)  # 2 * (1 + 11) / 2**11
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64) and mcnemar_exact(6, 0) == mcnemar_exact(0, 6)


def test_paired_counts_discordant_questions():
    rows = [("a", 1, True), ("a", 2, False), ("a", 3, False), ("b", 1, True), ("b", 2, True), ("b", 3, True)]
    records = [{"mode": m, "id": i, "correct": c} for m, i, c in rows]
    (p,) = paired(records, ["a", "b"])
    assert (p["mode"], p["versus"], p["n"], p["right_only_mode"], p["right_only_versus"]) == ("b", "a", 3, 2, 0)
    assert p["mcnemar_p"] == pytest.approx(0.5)


EVAL = ["eval", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--task", f"jsonl:{TASK}", "--split", "all",
        "--modes", "receiver,c2c", "--method", "cloze", "--batch-size", "2"]  # fmt: skip


def test_a_finished_evaluation_is_never_overwritten_unasked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(EVAL) == 0 and main(EVAL) == 0  # the default folder: the second run takes a fresh one
    folders = sorted(p.name for p in (tmp_path / "runs/eval").iterdir())
    assert len(folders) == 2 and folders[1] == folders[0] + "-2"
    out = tmp_path / "runs/eval" / folders[0]
    before = (out / "summary.json").read_bytes()
    capsys.readouterr()
    assert main([*EVAL, "--out", str(out)]) == 2  # explicit: refused, nothing touched
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1 and (out / "summary.json").read_bytes() == before
    assert main([*EVAL, "--out", str(out), "--overwrite"]) == 0


def test_an_interrupted_evaluation_continues_where_it_stopped(tmp_path, monkeypatch):
    """Killed after some batches, the same command scores only the rest and ends with the same records as a run
    that was never interrupted; a cut-off last line of the partial file is dropped."""
    assert main([*EVAL, "--out", str(tmp_path / "clean")]) == 0
    calls, real, dying = [], Evaluator.score_batch, [True]

    def dies_on_third_batch(self, batch, mode):
        calls.append((mode, [it.id for it in batch]))
        if dying[0] and len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, batch, mode)

    monkeypatch.setattr(Evaluator, "score_batch", dies_on_third_batch)
    out = tmp_path / "cut"
    assert main([*EVAL, "--out", str(out)]) == 130
    partial = out / "records.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 4  # header + two batches of two
    with open(partial, "a") as f:
        f.write('{"mode": "receiver", "id": "half a li')  # what a kill mid-write leaves
    calls.clear()
    dying[0] = False
    assert main([*EVAL, "--out", str(out)]) == 0
    items = [it.id for it in select_items(_cfg())]  # 5 items: 3 batches per mode, 2 scored before the kill
    assert calls == [("receiver", items[4:]), ("c2c", items[:2]), ("c2c", items[2:4]), ("c2c", items[4:])]
    assert not partial.exists()

    def strip(path):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "latency_s"} for r in records]

    assert strip(out / "records.jsonl") == strip(tmp_path / "clean" / "records.jsonl")
    (out / "summary.json").unlink()  # a partial run of other settings is never mixed in
    partial.write_text(json.dumps({"header": {"config": "other"}}) + "\n")
    with pytest.raises(C2CError, match="other settings"):
        choose_output(out, out, {"config": "mine"}, overwrite=False)
    assert choose_output(None, out, {"config": "mine"}, overwrite=False) == out.with_name("cut-2")


def test_the_mismatched_control_is_an_eval_mode():
    """`--modes c2c,mismatched`: with the gates closed both equal the receiver; with them open the control differs
    from C2C; a trailing single question joins the batch before it (the control needs a neighbour)."""
    cfg = _cfg(modes=["receiver", "c2c", "mismatched"], method="cloze", batch_size=4)  # 5 items: 4 + 1 -> one batch
    items = select_items(cfg)
    closed = Evaluator(_model(closed=True), cfg).run(items)
    picks = {m: [r["prediction"] for r in closed if r["mode"] == m] for m in cfg.modes}
    assert picks["mismatched"] == picks["c2c"] == picks["receiver"]
    model = _model()
    scores = {}
    for mode in ("c2c", "mismatched"):
        ans = answerer(model, mode)
        scores[mode] = ans.logprobs([prompt_for(it, "cloze") for it in items], [[f" {c}" for c in it.choices]
                                                                                for it in items]).values  # fmt: skip
    assert scores["c2c"] != scores["mismatched"]
    with pytest.raises(C2CError, match="batch_size >= 2"):
        _cfg(modes=["mismatched"], batch_size=1)


def test_bench_measures_every_mode_and_writes_json_and_a_plot(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--task", f"jsonl:{TASK}", "--split",
                 "all", "--repeats", "2", "--batch-sizes", "1,2", "--new-tokens", "4", "--t2t-tokens", "16",
                 "--out", str(out), "--json"])  # fmt: skip
    assert code == 0 and out.with_suffix(".png").stat().st_size > 1000
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    lat = result["latency"]
    assert set(lat) == {"receiver", "sharer", "t2t", "c2c"}
    for mode, m in lat.items():
        assert 0 < m["ttft_s"] <= m["e2e_s"], mode
    # T2T pays for the sharer's 16 note tokens before the receiver starts; C2C does not (what each part costs is
    # the benchmark's to measure, not a test's: on a loaded machine the tiny models' times cross)
    assert lat["t2t"]["parts_median_s"]["t2t_sharer_s"] > 0 and lat["c2c"]["parts_median_s"]["t2t_sharer_s"] == 0
    # What crossed: nothing alone; t2t's notes as text; c2c the sharer's cache of the prompt (far more bytes)
    assert lat["receiver"]["wire_bytes"] == lat["sharer"]["wire_bytes"] == 0
    assert 0 < lat["t2t"]["wire_bytes"] < lat["c2c"]["wire_bytes"]
    assert set(result["throughput_tok_s"]) == {"receiver", "c2c"}
    assert all(v > 0 for per_bs in result["throughput_tok_s"].values() for v in per_bs.values())


def test_receiver_only_evaluation_does_not_load_the_sharers_weights(tmp_path, monkeypatch, capsys):
    from cache2cache.inference import factory

    r, s = tiny("tiny-llama"), tiny("tiny-qwen2")
    make_fuser(r, s).save_pretrained(tmp_path / "fuser")
    loaded = []
    real = factory.load_model
    monkeypatch.setattr(factory, "load_model", lambda name, **kw: loaded.append(name) or real(name, **kw))
    argv = ["eval", "--receiver", "tiny-llama", "--sharer", "tiny-qwen2", "--fuser", str(tmp_path / "fuser"),
            "--task", f"jsonl:{TASK}", "--split", "all", "--method", "cloze", "--json"]  # fmt: skip
    assert main(argv + ["--modes", "receiver", "--out", str(tmp_path / "a")]) == 0
    assert loaded == ["tiny-llama"]
    alone = json.loads(capsys.readouterr().out)["modes"]["receiver"]["accuracy"]
    assert main(argv + ["--modes", "receiver,sharer", "--out", str(tmp_path / "b")]) == 0
    assert loaded == ["tiny-llama", "tiny-llama", "tiny-qwen2"]
    assert json.loads(capsys.readouterr().out)["modes"]["receiver"]["accuracy"] == alone


def test_the_machine_line_names_the_cpu_and_its_bf16_instructions(tmp_path):
    """Read from /proc/cpuinfo's first core (flags repeat per core); without the file, the name Python knows."""
    from cache2cache.evaluation.machine import cpu

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx2 amx_bf16 avx512f\n\n"
                    "processor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: fpu\n")  # fmt: skip
    level = torch.backends.cpu.get_cpu_capability()
    assert cpu(info) == f"Some CPU 9000, {level} kernels, amx_bf16"
    assert cpu(tmp_path / "absent").endswith(f", {level} kernels")
