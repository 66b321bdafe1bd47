"""The shape of the house, checked from the source: no import circle, no import from a lower layer to a higher
one, no oversized module, and every package installed by pyproject.toml (a forgotten one breaks `pip install .`
but not an editable install)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the layers, bottom up: a module may import its own layer and the ones below, never above
LAYERS = [
    ("_version", "errors", "registry", "display", "safeio", "process", "search_spaces"),
    ("kernels",),
    ("models", "data"),
    ("peft",),
    ("training", "tasks", "proxies"),
    ("search",),
    ("deploy",),
    ("commands", "cli"),
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
MAX_LINES = 600  # kernels/ excepted: a fused kernel and its backward pass are long by nature


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for the package and the root kernels/ folder it installs as
    hybridsearch.kernels."""
    out = {}
    for base, prefix in ((ROOT / "hybridsearch", "hybridsearch"), (ROOT / "kernels", "hybridsearch.kernels")):
        for f in base.rglob("*.py"):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = f
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """The project modules ``name`` imports, lazily (inside functions) or not."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if _is_package(name) else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            found.update(subs or [base])
    return {m for m in found if m in MODULES and m != name}


GRAPH = {m: _imports(m) for m in MODULES}


def _room(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None  # the package face itself has no room


def test_every_module_lives_in_a_known_layer():
    unknown = sorted({_room(m) for m in MODULES} - set(LAYER) - {None})
    assert not unknown, f"add these to a layer in tests/test_house.py: {unknown}"


def test_no_import_goes_up_a_layer():
    up = [f"{m} -> {n}" for m, deps in GRAPH.items() for n in deps
          if _room(m) is not None and (_room(n) is None or LAYER[_room(n)] > LAYER[_room(m)])]
    assert not up, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(up))


def test_no_import_circle():
    """Tarjan's strongly connected components of the module graph: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if not m.startswith("hybridsearch.kernels")))
def test_module_size(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (> {MAX_LINES}): split it"


def test_pyproject_installs_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m in MODULES if _is_package(m)} | {"hybridsearch.search_spaces"}
    assert packages == listed, f"missing: {sorted(packages - listed)}; stale: {sorted(listed - packages)}"


def test_every_source_folder_is_a_package():
    """A folder of modules without __init__.py imports in a checkout but is never installed."""
    for base in (ROOT / "hybridsearch", ROOT / "kernels"):
        for d in [base, *[p for p in base.rglob("*") if p.is_dir()]]:
            if any(d.glob("*.py")):
                assert (d / "__init__.py").is_file(), f"{d.relative_to(ROOT)} has modules but no __init__.py"


def test_a_source_checkout_imports_without_an_install() -> None:
    """Without site's .pth files (so no editable-install finder), the checkout alone resolves hybridsearch.kernels
    and hybridsearch.search_spaces from the root folders, as pyproject maps them."""
    import site
    import subprocess
    import sys

    code = ("import hybridsearch, hybridsearch.kernels as k, hybridsearch.search_spaces as s; "
            "print(k.__file__); print(s.__file__)")
    env = {"PYTHONPATH": f"{ROOT}:{site.getsitepackages()[0]}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(ROOT / "kernels" / "__init__.py"), str(ROOT / "search_spaces" / "__init__.py")]
