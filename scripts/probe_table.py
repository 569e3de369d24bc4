"""The capacity-probe table (issue 13): on questions whose evidence only the sharer read (evaluation/probes.py),
the receiver alone, the receiver reading the evidence itself (what the receiver could do with it), the sharer,
T2T (the sharer read the evidence and writes notes) on part of the same questions, and for each fuser C2C against
the mismatched control and against T2T on T2T's questions. A gain of C2C over the receiver that the control does not
share is information carried from the sharer's cache into the receiver's.

    .venv/bin/python scripts/probe_table.py --fuser qa --fuser brief80
        # reads docs/results/eval/probe_TAG_TASK (c2c eval --modes ...), probe_upper_TASK (receiver, evidence in)
        # and probe_t2t_TASK (T2T on a part of the same sample: scripts/same_questions.py)
"""

from __future__ import annotations

import argparse

from qa_summary import R, acc, records, versus

from cache2cache.atomic import write_json

TASKS = ["sciq_brief", "boolq_brief"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuser", action="append", required=True, help="run tag; the first also gives the baselines")
    args = ap.parse_args()
    base = args.fuser[0]
    head = "| probe (held out, cloze) | n | receiver | receiver reading the evidence | sharer | T2T (n) |"
    head += "".join(f" C2C, {t} (vs receiver) | {t}, mismatched (C2C vs it) | {t} vs T2T on its questions |"
                    for t in args.fuser)  # fmt: skip
    print(head + "\n|" + "---|" * (6 + 3 * len(args.fuser)))
    out = {}
    for task in TASKS:
        rec = records(f"probe_{base}_{task}", "receiver")
        if not rec:
            continue
        upper = {k: v for k, v in records(f"probe_upper_{task}", "receiver").items() if k in rec}
        t2t = {k: v for k, v in records(f"probe_t2t_{task}", "t2t").items() if k in rec}
        row = (f"| {task} | {len(rec)} | {acc(rec)} | {acc(upper) if upper else '-'} | "
               f"{acc(records(f'probe_{base}_{task}', 'sharer'))} | {acc(t2t)} ({len(t2t)}) |")  # fmt: skip
        out[task] = {"n": len(rec), "receiver": acc(rec), "receiver_with_evidence": acc(upper) if upper else None,
                     "sharer": acc(records(f"probe_{base}_{task}", "sharer")), "t2t": acc(t2t), "t2t_n": len(t2t),
                     "fusers": {}}  # fmt: skip
        for tag in args.fuser:
            c2c, mis = records(f"probe_{tag}_{task}", "c2c"), records(f"probe_{tag}_{task}", "mismatched")
            if not c2c:
                row += " - | - | - |"
                continue
            vs_rec, p1 = versus(c2c, {k: rec[k] for k in c2c})
            vs_mis, p2 = versus(c2c, mis)
            on_t2t = {k: c2c[k] for k in t2t if k in c2c}
            vs_t2t, p3 = versus(on_t2t, t2t) if on_t2t else ("-", None)
            row += f" **{acc(c2c)}** ({vs_rec}) | {acc(mis)} ({vs_mis}) | {acc(on_t2t)} ({vs_t2t}) |"
            out[task]["fusers"][tag] = {"c2c": acc(c2c), "mismatched": acc(mis), "c2c_vs_receiver": p1,
                                        "c2c_vs_mismatched": p2, "c2c_on_t2t_questions": acc(on_t2t),
                                        "c2c_vs_t2t": p3}  # fmt: skip
        print(row)
    write_json(R / f"probe_table_{'_'.join(args.fuser)}.json", out)


if __name__ == "__main__":
    main()
