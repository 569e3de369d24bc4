"""The capacity-probe table (issue 13): on questions whose evidence only the sharer read (evaluation/probes.py),
the receiver alone, the receiver reading the evidence itself (what the receiver could do with it), the sharer,
and for each fuser C2C against the mismatched control. A gain of C2C over the receiver that the control does not
share is information carried from the sharer's cache into the receiver's.

    .venv/bin/python scripts/probe_table.py --fuser qa --fuser brief80
        # reads docs/results/eval/probe_TAG_TASK (c2c eval --modes ...) and probe_upper_TASK (receiver, evidence in)
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
    head = "| probe (held out, cloze) | n | receiver | receiver reading the evidence | sharer |"
    head += "".join(f" C2C, {t} (vs receiver) | {t}, mismatched (C2C vs it) |" for t in args.fuser)
    print(head + "\n|" + "---|" * (5 + 2 * len(args.fuser)))
    out = {}
    for task in TASKS:
        rec = records(f"probe_{base}_{task}", "receiver")
        if not rec:
            continue
        upper = {k: v for k, v in records(f"probe_upper_{task}", "receiver").items() if k in rec}
        row = (f"| {task} | {len(rec)} | {acc(rec)} | {acc(upper) if upper else '-'} | "
               f"{acc(records(f'probe_{base}_{task}', 'sharer'))} |")  # fmt: skip
        out[task] = {"n": len(rec), "receiver": acc(rec), "receiver_with_evidence": acc(upper) if upper else None,
                     "sharer": acc(records(f"probe_{base}_{task}", "sharer")), "fusers": {}}  # fmt: skip
        for tag in args.fuser:
            c2c, mis = records(f"probe_{tag}_{task}", "c2c"), records(f"probe_{tag}_{task}", "mismatched")
            if not c2c:
                row += " - | - |"
                continue
            vs_rec, p1 = versus(c2c, {k: rec[k] for k in c2c})
            vs_mis, p2 = versus(c2c, mis)
            row += f" **{acc(c2c)}** ({vs_rec}) | {acc(mis)} ({vs_mis}) |"
            out[task]["fusers"][tag] = {"c2c": acc(c2c), "mismatched": acc(mis), "c2c_vs_receiver": p1,
                                        "c2c_vs_mismatched": p2}  # fmt: skip
        print(row)
    write_json(R / f"probe_table_{'_'.join(args.fuser)}.json", out)


if __name__ == "__main__":
    main()
