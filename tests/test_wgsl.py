"""The WGSL preprocessor (webrwkv.wgsl): switches, loops, expressions, includes and its errors."""

from __future__ import annotations

import re

import pytest

from webrwkv.errors import GpuError
from webrwkv.kernels import Kernels, shader_source
from webrwkv.wgsl import render


def test_if_elif_else_and_nesting():
    text = "#if MODE == 'a'\nA\n#elif MODE == 'b'\nB\n#if X\nBX\n#endif\n#else\nC\n#endif\nend"
    assert render(text, {"MODE": "a", "X": 1}) == "A\nend"
    assert render(text, {"MODE": "b", "X": 1}) == "B\nBX\nend"
    assert render(text, {"MODE": "b", "X": 0}) == "B\nend"
    assert render(text, {"MODE": "z", "X": 0}) == "C\nend"


def test_for_loops_with_expressions_lists_and_templates():
    text = "#for i in 0..N\n  let q${i} = w[{{BASE}}u + ${i * 4}u]; // ${L[i]} ${'xyzw'[i % 4]}\n#endfor"
    out = render(text, {"N": 3, "BASE": 7, "L": [10, 20, 30]})
    assert out.split("\n") == ["  let q0 = w[7u + 0u]; // 10 x", "  let q1 = w[7u + 4u]; // 20 y",
                               "  let q2 = w[7u + 8u]; // 30 z"]
    nested = "#for i in 0..2\n#for j in i..2\n${i}${j}\n#endfor\n#endfor"
    assert render(nested, {}).split("\n") == ["00", "01", "11"]
    assert render("#for i in 0..N / 4\nx\n#endfor", {"N": 9}) == "x\nx"  # integer division
    assert render("v = {{V}};", {"V": [1.5, 2]}) == "v = 1.5, 2;"
    assert render("#if len(A) == 1\none\n#else\nmany\n#endif", {"A": [3]}) == "one"


@pytest.mark.parametrize("text, params, match", [
    ("#if X\na", {"X": 1}, "no #endif"),
    ("#for i in 0..3\na", {}, "no #endfor"),
    ("#endif", {}, "without its #if"),
    ("#for i 0..3\na\n#endfor", {}, "is not '#for VAR in A..B'"),
    ("${Y}", {}, "'Y' not given"),
    ("{{Y}}", {}, r"\['Y'\] not given"),
    ("${__import__('os')}", {}, "not allowed"),
    ("${X.real}", {"X": 1}, "not allowed"),
    ("#if (\nx\n#endif", {}, "cannot read"),
])
def test_errors_name_the_problem(text, params, match):
    with pytest.raises(GpuError, match=match):
        render(text, params)


def test_includes_and_a_cycle():
    files = {"a": "A\n#include b", "b": "B {{X}}\n#include {{NEXT}}", "c": "C", "loop": "#include loop"}
    assert render("#include a", {"X": 1, "NEXT": "c"}, source=files.__getitem__) == "A\nB 1\nC"
    with pytest.raises(GpuError, match="nest too deeply"):
        render("#include loop", {}, source=files.__getitem__)


def test_kernel_sources_have_no_statements_from_python():
    """Every template value a kernel gets is a number, a name or a list of numbers: a kernel's source with
    its values filled in differs from the file only by those values and the expanded directives."""
    from gpu_util import device

    k = Kernels(device())
    src = k.source("wkv7", dict(C=128, WG=64, HS=64, NL=4, SLOT=1, PTS=1, KV=0, W0=0, A0=0, V0=0, KK=0, KA=0,
                                RK=0, LAYER0=0, LNXW=0, LNXB=0, EPS=64e-5))
    assert len(re.findall(r"var s\d+ = state", src)) == 64 and "s63 = s63 * sw[63u]" in src and "#for" not in src
    assert "#" not in shader_source("wkv7").replace("#for", "").replace("#endfor", "").replace("#include", "")
