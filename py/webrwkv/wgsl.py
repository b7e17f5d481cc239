"""The WGSL preprocessor: `#include`, `{{NAME}}` constants, `#if`/`#elif`/`#else`/`#endif` switches and
`#for` loops whose bodies are repeated with `${expr}` filled in. Every statement lives in shaders/*.wgsl;
Python passes only values (sizes, offsets, lists of numbers, variant names).

WGSL has no preprocessor and no unroll hint. The kernels keep per-thread state in named registers
(`s0 .. s63`): a loop over a local array is indexed at run time and bounds-checked, which measured
30-50% slower on an H200 (bench/RESULTS.md), so `#for` writes the unrolled statements out.

Expressions (`#if`, `#for` bounds, `${...}`) are integer/string arithmetic over the template values and
the loop variables: + - * / (integer) %, comparisons, and/or/not, list literals, `x[i]` and len().
"""

from __future__ import annotations

import ast
import re
from typing import Any, Callable

from .errors import GpuError

_DIRECTIVE = re.compile(r"^\s*#(include|if|elif|else|endif|for|endfor)\b\s*(.*?)\s*$")
_TEMPLATE = re.compile(r"\{\{(\w+)\}\}")
_EXPR = re.compile(r"\$\{([^}]*)\}")
_FOR = re.compile(r"^(\w+)\s+in\s+(.+?)\.\.(.+)$")


def _eval(expr: str, env: dict, where: str) -> Any:
    """Evaluate a small integer/string expression over `env` (no calls but len, no attributes)."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise GpuError(f"{where}: cannot read the expression {expr!r}") from None

    def ev(n: ast.AST) -> Any:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, str)):
            return n.value
        if isinstance(n, ast.Name):
            if n.id not in env:
                raise GpuError(f"{where}: template value {n.id!r} not given")
            return env[n.id]
        if isinstance(n, ast.BinOp):
            a, b = ev(n.left), ev(n.right)
            ops: dict[type, Callable] = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                                         ast.Div: lambda: a // b, ast.FloorDiv: lambda: a // b,
                                         ast.Mod: lambda: a % b}
            if type(n.op) in ops:
                return ops[type(n.op)]()
        if isinstance(n, ast.UnaryOp):
            v = ev(n.operand)
            if isinstance(n.op, ast.USub):
                return -v
            if isinstance(n.op, ast.Not):
                return not v
        if isinstance(n, ast.BoolOp):
            vals = [ev(v) for v in n.values]
            return all(vals) if isinstance(n.op, ast.And) else any(vals)
        if isinstance(n, ast.Compare) and len(n.ops) == 1:
            a, b = ev(n.left), ev(n.comparators[0])
            cmp: dict[type, Callable] = {ast.Eq: lambda: a == b, ast.NotEq: lambda: a != b, ast.Lt: lambda: a < b,
                                         ast.LtE: lambda: a <= b, ast.Gt: lambda: a > b, ast.GtE: lambda: a >= b}
            if type(n.ops[0]) in cmp:
                return cmp[type(n.ops[0])]()
        if isinstance(n, (ast.List, ast.Tuple)):
            return [ev(e) for e in n.elts]
        if isinstance(n, ast.Subscript):
            return ev(n.value)[ev(n.slice)]
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "len" and len(n.args) == 1:
            return len(ev(n.args[0]))
        raise GpuError(f"{where}: {ast.unparse(n)!r} is not allowed in a kernel expression")

    return ev(tree)


def _value(v: Any) -> str:
    """A template value as WGSL text: numbers as they are, lists comma-separated."""
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    return str(v)


def include(text: str, source: Callable[[str], str], params: dict, depth: int = 0) -> str:
    """Replace `#include NAME` lines (NAME may be a `{{VALUE}}`) by the named file, recursively."""
    if depth > 8:
        raise GpuError("kernel includes nest too deeply (an include cycle?)")

    def sub(m: re.Match) -> str:
        name = _TEMPLATE.sub(lambda t: _value(params.get(t.group(1), t.group(0))), m.group(1))
        return include(source(name), source, params, depth + 1)

    return re.sub(r"^\s*#include\s+(\S+)\s*$", sub, text, flags=re.M)


def _block(lines: list[str], i: int, stop: tuple[str, ...]) -> tuple[list, int, str]:
    """Parse lines[i:] into a tree up to a directive in `stop`: items are str lines, ("for", head, body)
    and ("if", [(cond, body)], else_body)."""
    out: list = []
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if not m or m.group(1) == "include":
            out.append(lines[i])
            i += 1
            continue
        kind, arg = m.groups()
        if kind in stop:
            return out, i, kind
        if kind == "for":
            body, i, end = _block(lines, i + 1, ("endfor",))
            if end != "endfor":
                raise GpuError(f"kernel: '#for {arg}' has no #endfor")
            out.append(("for", arg, body))
            i += 1
        elif kind == "if":
            arms, other, cond = [], None, arg
            i += 1
            while True:
                body, i, end = _block(lines, i, ("elif", "else", "endif"))
                if not end:
                    raise GpuError(f"kernel: '#if {arg}' has no #endif")
                if cond is None:
                    other = body
                else:
                    arms.append((cond, body))
                if end == "endif":
                    break
                cond = _DIRECTIVE.match(lines[i]).group(2) if end == "elif" else None
                i += 1
            out.append(("if", arms, other or []))
            i += 1
        else:
            raise GpuError(f"kernel: '#{kind}' without its #if / #for")
    return out, i, ""


def _emit(tree: list, env: dict, name: str, out: list[str]) -> None:
    for item in tree:
        if isinstance(item, str):
            line = _TEMPLATE.sub(lambda m: _value(env[m.group(1)]) if m.group(1) in env else m.group(0), item)
            out.append(_EXPR.sub(lambda m: _value(_eval(m.group(1), env, name)), line))
        elif item[0] == "for":
            m = _FOR.match(item[1])
            if not m:
                raise GpuError(f"kernel {name}: '#for {item[1]}' is not '#for VAR in A..B'")
            var, lo, hi = m.group(1), _eval(m.group(2), env, name), _eval(m.group(3), env, name)
            for k in range(int(lo), int(hi)):
                _emit(item[2], {**env, var: k}, name, out)
        else:
            _, arms, other = item
            for cond, body in arms:
                if _eval(_TEMPLATE.sub(lambda m: _value(env.get(m.group(1), m.group(0))), cond), env, name):
                    _emit(body, env, name, out)
                    break
            else:
                _emit(other, env, name, out)


def render(text: str, params: dict, name: str = "kernel", source: Callable[[str], str] | None = None) -> str:
    """The WGSL of `text` for these template values: includes, switches and loops expanded."""
    if source is not None:
        text = include(text, source, params)
    tree, _, end = _block(text.split("\n"), 0, ())
    out: list[str] = []
    _emit(tree, dict(params), name, out)
    result = "\n".join(out)
    missing = sorted(set(_TEMPLATE.findall(result)))
    if missing:
        raise GpuError(f"kernel {name}: template values {missing} not given")
    return result
