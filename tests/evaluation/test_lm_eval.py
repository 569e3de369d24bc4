"""The lm-evaluation-harness model on tiny models: a local task (YAML over a JSONL file, no hub) through
`lm_eval.simple_evaluate`, agreeing with `c2c eval --method cloze` question by question; the other two request
types; and the command line entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from cache2cache.evaluation.lm_eval_model import C2CLM, mc_task_yaml  # noqa: E402  (registers --model c2c)
from cache2cache.evaluation.runner import EvalConfig, Evaluator, select_items  # noqa: E402

ARGS = "receiver=tiny-llama,sharer=tiny-qwen2,mode=c2c"
ROWS = [{"question": "What is the capital of France?", "choices": ["Berlin", "Paris", "Rome", "Madrid"], "answer": 1},
        {"question": "Which planet is known as the red planet?", "choices": ["Mars", "Venus"], "answer": 0},
        {"question": "What is two plus two?", "choices": ["three", "four", "five"], "answer": 1},
        {"question": "Which animal barks?", "choices": ["cat", "dog", "cow", "fish"], "answer": 1},
        {"question": "What colour is grass?", "choices": ["green", "blue"], "answer": 0}]  # fmt: skip


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "task.yaml").write_text(mc_task_yaml("c2c_tiny_mc", str(data)))
    return tmp_path


def test_a_local_task_agrees_with_c2c_eval_cloze(task_dir):
    res = lm_eval.simple_evaluate(model="c2c", model_args=ARGS, tasks=["c2c_tiny_mc"], batch_size=4,
                                  task_manager=TaskManager(include_path=str(task_dir)), log_samples=True)  # fmt: skip
    samples = sorted(res["samples"]["c2c_tiny_mc"], key=lambda s: s["doc_id"])
    lm_preds = []
    for s, row in zip(samples, ROWS):
        scores = [r[0] for r in s["filtered_resps"]]
        per_byte = [v / len(f" {c}".encode()) for v, c in zip(scores, row["choices"])]
        lm_preds.append(max(range(len(per_byte)), key=per_byte.__getitem__))
        assert s["acc_norm"] == float(lm_preds[-1] == row["answer"])
    model = C2CLM(receiver="tiny-llama", sharer="tiny-qwen2", mode="c2c").model
    cfg = EvalConfig(task=f"jsonl:{task_dir / 'mc.jsonl'}", split="all", modes=["c2c"], method="cloze")
    records = Evaluator(model, cfg).run(select_items(cfg))
    assert [r["prediction"] for r in records] == lm_preds  # same prompts, same scores, same picks
    assert res["results"]["c2c_tiny_mc"]["acc_norm,none"] == sum(r["correct"] for r in records) / len(ROWS)


def test_rolling_loglikelihood_and_generation():
    lm = C2CLM(receiver="tiny-llama", sharer="tiny-qwen2", mode="c2c")
    text = "the lighthouse keeper counts ships " * 3
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    model = lm.scorer
    import torch

    ids = [model.tokenizer.bos_token_id or model.tokenizer.eos_token_id] + model.tokenizer(text)["input_ids"]
    with torch.no_grad():
        logp = model.model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    assert rolling == pytest.approx(float(logp.gather(-1, torch.tensor(ids[1:])[:, None]).sum()), rel=1e-4)
    (greedy,) = lm.loglikelihood([Instance("loglikelihood", {}, ("Hi", " there"), 0)])
    assert greedy[0] < 0 and isinstance(greedy[1], bool)
    (gen,) = lm.generate_until([Instance("generate_until", {}, ("Say hi", {"until": ["\n"], "max_gen_toks": 5}), 0)])
    assert "\n" not in gen and gen == lm.answerer.generate(["Say hi"]).results[0].text.split("\n")[0][:len(gen)]


def test_the_command_line_runs_a_local_task(task_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "cache2cache.evaluation.lm_eval_model", "--model", "c2c",
                          "--model_args", ARGS, "--tasks", "c2c_tiny_mc", "--include_path", str(task_dir),
                          "--output_path", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                              "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "c2c_tiny_mc" in out.stdout and "acc_norm" in out.stdout
    assert list(Path(tmp_path / "out").rglob("results_*.json"))
