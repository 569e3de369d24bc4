"""The layout is the architecture: every part imports only parts on lower floors, no module imports itself back
through others, and no module grows past what one reading holds (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "cache2cache"
# Lowest first. A module may import its own part and the parts on floors below it, never a part on its floor
# or above (the package's __init__ imports names lazily, at first use, and is the top).
FLOORS = [
    {"errors", "version"},
    {"atomic", "hub", "packages", "kv", "kl", "plotting"},
    {"adapter_dir"},
    {"models"},
    {"alignment"},
    {"caches"},
    {"data"},
    {"maps"},
    {"fuser", "translation"},
    {"inference"},
    {"evaluation"},
    {"training"},
    {"reuse"},
    {"agents", "serving"},
    {"cli"},
]
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str] = frozenset()) -> set[str]:
    """The cache2cache modules `path` imports (at any depth of its code), as dotted names: for `from P import
    name`, P.name where that is one of `modules`, else P."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & set(modules)
            out |= subs if len(subs) == len(node.names) else subs | {target}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {t for t in out if t.startswith("cache2cache")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: {t for t in imports(p, set(modules)) if t in modules and t != m} for m, p in modules.items()}


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def floor(module: str) -> int:
    p = part(module)
    if not p:
        return len(FLOORS)
    return next(i for i, f in enumerate(FLOORS) if p in f)


def test_every_part_has_a_floor():
    parts = {part(m) for m in graph()} - {""}
    assert parts <= set().union(*FLOORS), f"parts without a floor: {parts - set().union(*FLOORS)}"


def test_imports_only_run_down():
    up = [f"{m} -> {t}" for m, ts in graph().items() for t in ts
          if part(m) != part(t) and part(m) and floor(t) >= floor(m)]  # fmt: skip
    assert not up, "imports that run up (or sideways) a floor:\n" + "\n".join(sorted(up))


def test_no_import_circles():
    g, seen, stack, circles = graph(), set(), [], []

    def visit(m: str) -> None:
        if m in stack:
            circles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(g[m]):
            visit(t)
        stack.pop()

    for m in sorted(g):
        visit(m)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_modules_stay_short():
    long = {module_name(p): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The floor check itself: an import from a lower part up into a higher one is found."""
    (tmp_path / "cache2cache" / "models").mkdir(parents=True)
    bad = tmp_path / "cache2cache" / "models" / "x.py"
    bad.write_text("from ..serving.app import create_app\n")
    global ROOT
    old, ROOT = ROOT, tmp_path / "cache2cache"
    try:
        found = imports(bad, {"cache2cache.serving.app"})
        assert "cache2cache.serving.app" in found and floor("cache2cache.serving.app") > floor(module_name(bad))
    finally:
        ROOT = old
