"""The issue-13 table: receiver, sharer, T2T, C2C with the chat fuser, C2C with the question-set fuser, and that
fuser fed another question's sharer cache, on the same seeded validation questions, with paired counts.

    .venv/bin/python scripts/qa_summary.py            # prints markdown, writes docs/results/qa_summary.json

Reads: docs/results/eval/trained_TASK_val100_cloze (chat-fuser C2C; receiver, else from trained300_TASK_...),
docs/results/eval/
sharer_TASK_val100_cloze, docs/results/eval/trained_TASK_val40_cloze_t2t, docs/results/qa_mismatched_TASK.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from cache2cache.atomic import write_json
from cache2cache.evaluation.runner import discordant
from cache2cache.evaluation.scoring import mcnemar_exact

R = Path("docs/results")
TASKS = ["arc_easy", "arc_challenge", "openbookqa", "mmlu"]


def records(run: str, mode: str) -> dict[str, bool]:
    path = R / "eval" / run / "records.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: bool(r["correct"]) for r in rows if r["mode"] == mode}


def acc(right: dict[str, bool]) -> str:
    return f"{sum(right.values()) / len(right):.2f}" if right else "-"


def versus(a: dict[str, bool], b: dict[str, bool]) -> tuple[str, dict]:
    n, only_a, only_b = discordant(a, b)
    p = mcnemar_exact(only_a, only_b)
    return f"+{only_a}/-{only_b}, p={p:.2g}", {"n": n, "only_first": only_a, "only_second": only_b, "p": p}


def main() -> None:
    rows, out = [], {}
    for task in TASKS:
        path = R / f"qa_mismatched_{task}.json"
        if not path.is_file():
            continue
        qa = json.loads(path.read_text())
        c2c = {r["id"]: r["c2c"] for r in qa["records"]}
        mis = {r["id"]: r["mismatched"] for r in qa["records"]}
        rec = records(f"trained_{task}_val100_cloze", "receiver") or records(f"trained300_{task}_val100_cloze",
                                                                              "receiver")  # fmt: skip
        chat = records(f"trained_{task}_val100_cloze", "c2c")
        sharer = records(f"sharer_{task}_val100_cloze", "sharer")
        t2t = records(f"trained_{task}_val40_cloze_t2t", "t2t")
        vs_rec, p1 = versus(c2c, rec)
        vs_mis, p2 = versus(c2c, mis)
        vs_t2t, p3 = versus(c2c, t2t)
        t2t_shared = {k: v for k, v in c2c.items() if k in t2t}
        rows.append(f"| {task} | {acc(rec)} | {acc(sharer)} | {acc(chat)} | **{acc(c2c)}** ({vs_rec}) | {acc(mis)} "
                    f"({vs_mis}) | {acc(t2t)} vs C2C {acc(t2t_shared)} on {len(t2t_shared)} ({vs_t2t}) |")  # fmt: skip
        out[task] = {"receiver": acc(rec), "sharer": acc(sharer), "c2c_chat_fuser": acc(chat), "c2c_qa_fuser": acc(c2c),
                     "c2c_qa_mismatched": acc(mis), "t2t_40": acc(t2t), "c2c_vs_receiver": p1,
                     "c2c_vs_mismatched": p2, "c2c_vs_t2t": p3}  # fmt: skip
    print("| task (validation, cloze, n=100) | receiver | sharer | C2C, chat fuser | C2C, QA fuser (vs receiver) "
          "| QA fuser, another question's sharer cache (C2C vs it) | T2T, n=40 (vs C2C on the same) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    write_json(R / "qa_summary.json", out)


if __name__ == "__main__":
    main()
