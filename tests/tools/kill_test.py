"""kill -9 while a fuser is being saved, many times: afterwards the fuser folder must always load (the new
fuser, the old one, or the old one kept aside by an interrupted swap), and no temp folder may pile up.

    .venv/bin/python tests/tools/kill_test.py --trials 40
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITER = """
import sys, torch
from cache2cache import Fuser, ModelGeometry
from cache2cache.models.tiny import build_tiny
r, _ = build_tiny("tiny-llama"); s, _ = build_tiny("tiny-qwen2")
f = Fuser.for_pair("tiny-llama", ModelGeometry.from_config(r.config), "tiny-qwen2", ModelGeometry.from_config(s.config),
                   preset="base")
print("ready", flush=True)
while True:
    f.save_pretrained(sys.argv[1])
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("docs/results/kill_test.json"))
    args = ap.parse_args()
    from cache2cache.fuser.model import Fuser

    outcomes = {"loaded": 0, "loaded_from_aside": 0, "failed": 0}
    leftovers = 0
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "fuser"
        for _ in range(args.trials):
            proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
            proc.stdout.readline()  # "ready": the writer is saving in a loop from now on
            time.sleep(random.uniform(0.0, 0.5))
            proc.kill()  # SIGKILL
            proc.wait()
            aside = target.with_name(".fuser.old")
            try:
                Fuser.from_pretrained(target)
                outcomes["loaded_from_aside" if not target.exists() and aside.exists() else "loaded"] += 1
            except Exception:  # noqa: BLE001  (counted: this is what the test measures)
                outcomes["failed"] += 1
            leftovers = max(leftovers, len(list(Path(tmp).glob(".fuser.tmp*"))))
    result = {"trials": args.trials, **outcomes, "max_temp_folders_left": leftovers}
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
