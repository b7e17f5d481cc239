"""The shape of the package: no file over 400 lines, no import cycles, nothing outside models/ that
branches on a version, and every version of the registry complete (its file, its shader, its golden data)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "py" / "webrwkv"
FILES = sorted(p for p in PKG.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The webrwkv modules a file imports, anywhere in it (function-level imports count too)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("webrwkv")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("webrwkv"):
                continue
            for a in node.names:  # `from . import x` may name a module
                sub = f"{target}.{a.name}"
                out.add(sub if (PKG.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                        or (PKG.parent / Path(*sub.split("."))).is_dir() else target)
    return out - {mod}


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in FILES if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_no_import_cycles():
    graph = {module_name(p): imports(p) for p in FILES}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if t not in graph:
                continue
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t] if t in path else path + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles


def test_the_cycle_check_sees_a_cycle(tmp_path, monkeypatch):
    """The scan above is not vacuous: two modules importing each other are caught."""
    pkg = tmp_path / "webrwkv"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    assert "webrwkv.b" in imports(pkg / "a.py") and "webrwkv.a" in imports(pkg / "b.py")


def test_only_models_know_the_versions():
    """Outside models/ no code compares a version string (the registry is asked instead)."""
    pat = re.compile(r"""(==|!=|\bin\b)\s*\(?\s*["']v[4-9]["']|["']v[4-9]["']\s*(==|!=)|version\s*==(?!\s*["']HTTP)""")  # HTTP versions are not model versions
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in FILES if "models" not in p.parts
            for i, line in enumerate(p.read_text().splitlines(), 1) if pat.search(line)]
    assert not hits


def test_every_version_is_complete():
    """What a version needs (docs/ARCHITECTURE.md, "Adding a version"): its file with the whole recipe, its
    kernel, its golden data made by tools/make_golden.py."""
    from webrwkv.models import VERSIONS

    need = ("RENAMES", "ADAPTERS", "STORED_SHAPES", "detect", "detect_layout", "sizes", "layer_shapes",
            "released_shapes", "state_layout", "time_mix", "channel_mix", "VECS", "activations", "att", "ffn",
            "KERNEL")
    for v, mod in VERSIONS.items():
        missing = [n for n in need if not hasattr(mod, n)]
        assert not missing, (v, missing)
        assert (ROOT / "shaders" / f"{mod.KERNEL}.wgsl").is_file(), v
        assert (ROOT / "tests" / "golden" / f"{v}.st").is_file() and (ROOT / "tests" / "golden" / f"{v}.npz").is_file(), v


# wgpu-py's own handles, used by the native backend's hot path (direct library calls per dispatch)
FOREIGN_OK = {"native.py": {"_internal"}}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_reads_another_modules_private_attributes(path):
    """obj._private only where this module defines _private (a method, or an attribute it assigns)."""
    tree = ast.parse(path.read_text())
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    own |= {a.attr for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) for a in ast.walk(t)
            if isinstance(a, ast.Attribute)}
    own |= FOREIGN_OK.get(path.name, set())
    bad = [f"{ast.unparse(n)} (line {n.lineno})" for n in ast.walk(tree)
           if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
           and n.attr not in own]
    assert not bad
