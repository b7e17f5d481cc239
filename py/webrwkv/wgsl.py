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
import functools
import operator
import re
from typing import Any, Callable

from .errors import GpuError

_DIRECTIVE = re.compile(r"^\s*#(include|if|elif|else|endif|for|endfor)\b\s*(.*?)\s*$")
_TEMPLATE = re.compile(r"\{\{(\w+)\}\}")
_PIECE = re.compile(r"\{\{(\w+)\}\}|\$\{([^}]*)\}")
_FOR = re.compile(r"^(\w+)\s+in\s+(.+?)\.\.(.+)$")


def _eval(expr: str, env: dict, where: str) -> Any:
    """Evaluate a small integer/string expression over `env` (no calls but len, no attributes)."""
    return _compiled(expr.strip())(env, where)


_BINOPS: dict[type, Callable] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                                 ast.Div: operator.floordiv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_CMPS: dict[type, Callable] = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
                               ast.Gt: operator.gt, ast.GtE: operator.ge}


@functools.lru_cache(maxsize=None)
def _compiled(expr: str) -> Callable[[dict, str], Any]:
    """An expression turned once into closures: a kernel evaluates the same few thousand expressions many
    times over (in the browser's Python, parsing each time made the dry run of a model's kernels take ~1 s)."""
    try:
        return _build(ast.parse(expr, mode="eval").body)
    except SyntaxError:
        return _fails(f"cannot read the expression {expr!r}")


def _fails(msg: str) -> Callable[[dict, str], Any]:
    def f(env: dict, where: str) -> Any:
        raise GpuError(f"{where}: {msg}")
    return f


def _build(n: ast.AST) -> Callable[[dict, str], Any]:
    if isinstance(n, ast.Constant) and isinstance(n.value, (int, str)):
        v = n.value
        return lambda env, where: v
    if isinstance(n, ast.Name):
        name = n.id

        def look(env: dict, where: str) -> Any:
            if name not in env:
                raise GpuError(f"{where}: template value {name!r} not given")
            return env[name]
        return look
    if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
        op, a, b = _BINOPS[type(n.op)], _build(n.left), _build(n.right)
        return lambda env, where: op(a(env, where), b(env, where))
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.Not)):
        a = _build(n.operand)
        if isinstance(n.op, ast.USub):
            return lambda env, where: -a(env, where)
        return lambda env, where: not a(env, where)
    if isinstance(n, ast.BoolOp):
        vals, both = [_build(v) for v in n.values], isinstance(n.op, ast.And)
        return lambda env, where: (all if both else any)([v(env, where) for v in vals])
    if isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _CMPS:
        op, a, b = _CMPS[type(n.ops[0])], _build(n.left), _build(n.comparators[0])
        return lambda env, where: op(a(env, where), b(env, where))
    if isinstance(n, (ast.List, ast.Tuple)):
        elts = [_build(e) for e in n.elts]
        return lambda env, where: [e(env, where) for e in elts]
    if isinstance(n, ast.Subscript):
        a, i = _build(n.value), _build(n.slice)
        return lambda env, where: a(env, where)[i(env, where)]
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "len" and len(n.args) == 1:
        a = _build(n.args[0])
        return lambda env, where: len(a(env, where))
    return _fails(f"{ast.unparse(n)!r} is not allowed in a kernel expression")


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


@functools.lru_cache(maxsize=None)
def _parts(line: str) -> tuple:
    """A line split once into its text and its {{NAME}} ("{", NAME) and ${expr} ("$", expr) pieces."""
    out: list = []
    pos = 0
    for m in _PIECE.finditer(line):
        out += [line[pos:m.start()], ("{", m.group(1)) if m.group(1) is not None else ("$", m.group(2))]
        pos = m.end()
    return (*out, line[pos:])


def _emit(tree: list, env: dict, name: str, out: list[str]) -> None:
    for item in tree:
        if isinstance(item, str):
            parts = _parts(item)
            if len(parts) == 1:
                out.append(item)
                continue
            line = []
            for p in parts:
                if isinstance(p, str):
                    line.append(p)
                elif p[0] == "{":
                    line.append(_value(env[p[1]]) if p[1] in env else "{{" + p[1] + "}}")
                else:
                    line.append(_value(_eval(p[1], env, name)))
            out.append("".join(line))
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


@functools.lru_cache(maxsize=256)
def _tree(text: str) -> list:
    """The parsed directives of a kernel text (one parse for each of its variants; _emit only reads it)."""
    return _block(text.split("\n"), 0, ())[0]


def render(text: str, params: dict, name: str = "kernel", source: Callable[[str], str] | None = None) -> str:
    """The WGSL of `text` for these template values: includes, switches and loops expanded."""
    if source is not None:
        text = include(text, source, params)
    tree = _tree(text)
    out: list[str] = []
    _emit(tree, dict(params), name, out)
    result = "\n".join(out)
    missing = sorted(set(_TEMPLATE.findall(result)))
    if missing:
        raise GpuError(f"kernel {name}: template values {missing} not given")
    return result
