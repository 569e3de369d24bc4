"""Do lm-evaluation-harness (through `--model c2c`) and `c2c eval --method cloze` pick the same answers?

Writes the seeded validation sample `c2c eval` scores as a local lm-eval task (YAML over JSONL, no hub), runs it
through `lm_eval.simple_evaluate`, and compares lm-eval's per-question pick (the highest log-likelihood per byte,
its acc_norm rule) with a `c2c eval` run's records, question by question.

    python scripts/lm_eval_agreement.py --records docs/results/eval/trained_arc_easy_val100_cloze/records.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from cache2cache.evaluation.lm_eval_model import mc_task_yaml  # noqa: E402  (also registers --model c2c)
from cache2cache.atomic import write_json  # noqa: E402
from cache2cache.evaluation.runner import EvalConfig, select_items  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=Path, required=True, help="records.jsonl of a `c2c eval --method cloze` run")
    ap.add_argument("--mode", default="c2c")
    ap.add_argument("--model-args", default="", help="extra lm-eval model_args (receiver=...,sharer=...,fuser=...)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/lm_eval_agreement.json"))
    args = ap.parse_args()
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line.strip()]
    ours = {r["id"]: r for r in records if r["mode"] == args.mode}
    first = next(iter(ours.values()))
    cfg = EvalConfig(task=first["task"], split=first["split"], modes=[args.mode], method="cloze", limit=len(ours))
    items = [it for it in select_items(cfg) if it.id in ours]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "items.jsonl"
        data.write_text("".join(json.dumps({"id": it.id, "question": it.question.strip(), "choices": it.choices,
                                            "answer": it.answer}) + "\n" for it in items))  # fmt: skip
        (Path(tmp) / "task.yaml").write_text(mc_task_yaml("c2c_agreement", str(data)))
        model_args = ",".join(filter(None, [f"mode={args.mode}", args.model_args]))
        res = lm_eval.simple_evaluate(model="c2c", model_args=model_args, tasks=["c2c_agreement"], batch_size=8,
                                      task_manager=TaskManager(include_path=tmp), log_samples=True)  # fmt: skip
    rows = []
    for s in sorted(res["samples"]["c2c_agreement"], key=lambda s: s["doc_id"]):
        it = items[s["doc_id"]]
        per_byte = [r[0] / len(f" {c}".encode()) for r, c in zip(s["filtered_resps"], it.choices)]
        pick = max(range(len(per_byte)), key=per_byte.__getitem__)
        rows.append({"id": it.id, "lm_eval": pick, "c2c_eval": ours[it.id]["prediction"], "gold": it.answer})
    same = sum(r["lm_eval"] == r["c2c_eval"] for r in rows)
    result = {"records": str(args.records), "mode": args.mode, "model_args": model_args, "questions": len(rows),
              "same_prediction": same, "lm_eval_acc_norm": res["results"]["c2c_agreement"]["acc_norm,none"],
              "c2c_eval_accuracy": sum(r["c2c_eval"] == r["gold"] for r in rows) / len(rows),
              "differences": [r for r in rows if r["lm_eval"] != r["c2c_eval"]]}  # fmt: skip
    print(f"{same} of {len(rows)} questions: same pick; lm-eval acc_norm {result['lm_eval_acc_norm']:.3f}, "
          f"c2c eval accuracy {result['c2c_eval_accuracy']:.3f}")  # fmt: skip
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
