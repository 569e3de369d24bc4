"""Where an evaluation writes, and how an interrupted one continues instead of starting over.

Every scored batch is appended to `records.partial.jsonl` in the output folder (its first line says which
settings and models it belongs to); a killed run leaves those lines, and the same command picks them up and
scores only the rest. A finished run replaces the file by records.jsonl and summary.json. An output folder
that already holds a finished evaluation is never overwritten unless asked: the default folder moves on to a
fresh name (TASK_SPLIT-2, -3, ...), an explicit --out is refused without --overwrite.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import check_writable_dir
from ..errors import C2CError

PARTIAL = "records.partial.jsonl"
FINISHED = "summary.json"


def _read(path: Path) -> tuple[dict | None, list[dict]]:
    """The partial file's header and records; a last line cut off by a kill is dropped."""
    if not path.is_file():
        return None, []
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not lines or not isinstance(lines[0], dict) or "header" not in lines[0]:
        return None, []
    return lines[0]["header"], [r for r in lines[1:] if isinstance(r, dict) and "mode" in r and "id" in r]


def choose_output(out: Path | None, default: Path, header: dict, overwrite: bool) -> Path:
    """The folder this evaluation writes to (see the module docstring); checked to be writable before any work."""
    if out is not None:
        if (out / FINISHED).exists() and not overwrite:
            raise C2CError(f"--out {out} already holds a finished evaluation; pass --overwrite to replace it or "
                           "choose another folder")  # fmt: skip
        found, _ = _read(out / PARTIAL)
        if found is not None and found != header and not overwrite:
            raise C2CError(f"--out {out} holds an interrupted evaluation with other settings or models; pass "
                           "--overwrite to discard it or choose another folder")  # fmt: skip
        check_writable_dir(out, "--out")
        return out
    for k in range(1, 1000):
        path = default if k == 1 else default.with_name(f"{default.name}-{k}")
        found, _ = _read(path / PARTIAL)
        if not (path / FINISHED).exists() and (found is None or found == header):
            check_writable_dir(path, "output folder")
            return path
    raise C2CError(f"no free output folder next to {default}: pass --out")


class Progress:
    """The records already scored for this evaluation (on continuing) and the appender for new ones."""

    def __init__(self, out: Path, header: dict, overwrite: bool = False) -> None:
        self.path = out / PARTIAL
        found, records = _read(self.path)
        self.done: list[dict] = records if found == header and not overwrite else []
        self._by_key = {(r["mode"], r["id"]): r for r in self.done}
        out.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as f:  # rewritten whole: a cut-off line from a kill must not stay in the middle
            f.write(json.dumps({"header": header}) + "\n")
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in self.done)

    def scored(self, mode: str, ids: list[str]) -> list[dict] | None:
        """This batch's records if an earlier run scored all of them, else None."""
        found = [self._by_key.get((mode, i)) for i in ids]
        return None if None in found else found

    def add(self, records: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)
