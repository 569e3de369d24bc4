"""The issue-13 table for one fuser evaluated with `c2c eval --modes receiver,c2c,mismatched` (runs/eval_mm.sh):
receiver, sharer, C2C, the mismatched-sharer control, and T2T on up to 60 of the same questions (the 40-question
runs plus scripts/same_questions.py's top-up), with paired counts and the share of the receiver-to-sharer gap
that C2C closes with the right cache and with another question's.

    .venv/bin/python scripts/control_table.py --tag mm50    # reads docs/results/eval/mm50_TASK_val100_cloze
"""

from __future__ import annotations

import argparse

from qa_summary import R, TASKS, acc, records, versus

from cache2cache.atomic import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", required=True)
    args = ap.parse_args()
    rows, out, means = [], {}, {k: [] for k in ("receiver", "sharer", "c2c", "mismatched", "t2t")}
    for task in TASKS:
        run = f"{args.tag}_{task}_val100_cloze"
        c2c, mis, rec = records(run, "c2c"), records(run, "mismatched"), records(run, "receiver")
        if not c2c:
            continue
        sharer = records(f"sharer_{task}_val100_cloze", "sharer")
        t2t = {**records(f"trained_{task}_val40_cloze_t2t", "t2t"), **records(f"t2t_more_{task}_cloze", "t2t")}
        t2t = {k: v for k, v in t2t.items() if k in c2c}  # the same questions only
        vs_rec, p1 = versus(c2c, rec)
        vs_mis, p2 = versus(c2c, mis)
        vs_t2t, p3 = versus({k: c2c[k] for k in t2t}, t2t)
        for k, v in (("receiver", rec), ("sharer", sharer), ("c2c", c2c), ("mismatched", mis)):
            means[k].append(sum(v.values()) / len(v))
        means["t2t"].append(sum(t2t.values()) / len(t2t))
        rows.append(f"| {task} | {acc(rec)} | {acc(sharer)} | **{acc(c2c)}** ({vs_rec}) | {acc(mis)} ({vs_mis}) | "
                    f"{acc(t2t)} vs C2C {acc({k: c2c[k] for k in t2t})} on {len(t2t)} ({vs_t2t}) |")  # fmt: skip
        out[task] = {"receiver": acc(rec), "sharer": acc(sharer), "c2c": acc(c2c), "mismatched": acc(mis),
                     "t2t": acc(t2t), "t2t_n": len(t2t), "c2c_vs_receiver": p1, "c2c_vs_mismatched": p2,
                     "c2c_vs_t2t": p3}  # fmt: skip
    print("| task (validation, cloze, n=100) | receiver | sharer | C2C (vs receiver) | C2C fed another question's "
          "sharer cache (C2C vs it) | T2T (vs C2C on the same) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    mean = {k: sum(v) / len(v) for k, v in means.items() if v}
    gap = mean["sharer"] - mean["receiver"]
    print(f"\nmeans: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()) +
          f"; gap closed: C2C {(mean['c2c'] - mean['receiver']) / gap:.0%}, "
          f"mismatched {(mean['mismatched'] - mean['receiver']) / gap:.0%}")  # fmt: skip
    write_json(R / f"control_table_{args.tag}.json", {"tasks": out, "means": mean})


if __name__ == "__main__":
    main()
