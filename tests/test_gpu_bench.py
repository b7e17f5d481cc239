"""The bench command: random weights of released shapes, and its table / JSON output."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from gpu_util import device

from webrwkv.benchmark import parse_random, random_weights
from webrwkv.errors import WebRwkvError
from webrwkv.models import model_shapes


def test_random_specs_follow_released_shapes():
    v6 = parse_random("v6:L24:C2048")
    assert (v6.n_layer, v6.n_embd, v6.n_head, v6.head_size, v6.vocab, v6.dim_ffn) == (24, 2048, 32, 64, 65536, 7168)
    assert v6.dims == {"time_maa": 32, "time_decay": 64}
    v7 = parse_random("v7:L24:C2048")
    assert v7.dim_ffn == 8192 and v7.dims == {"w": 96, "a": 96, "v": 64, "g": 256}
    assert parse_random("v4:L12:C768").n_head == 1
    w = random_weights(parse_random("v7:L1:C64"))
    assert {k: v.shape for k, v in w.items()} == model_shapes(parse_random("v7:L1:C64"))
    with pytest.raises(WebRwkvError, match="VERSION:L"):
        parse_random("v8:L1:C64")


def test_bench_json(capsys):
    from webrwkv.benchmark import bench_main

    device()
    args = SimpleNamespace(model=None, random="v5:L1:C64", adapter=None, prefill=4, decode=2, quant="none", json=True)
    assert bench_main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["version"] == "v5" and row["weight_bytes"] > 2 * 65536 * 64 * 2
    assert row["pp4_tok_s"] > 0 and row["tg2_tok_s"] > 0
    args.json = False
    assert bench_main(args) == 0
    out = capsys.readouterr().out
    assert "pp4 t/s" in out and "tg2 t/s" in out


def test_dispatch_bench_native():
    """bench/dispatch.py's native loop runs its steps and reports a per-dispatch cost consistent with its rate."""
    import sys
    from pathlib import Path

    device()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import dispatch

    row = dispatch.native(10, 5, 1)
    assert row["backend"] == "native" and (row["dispatches"], row["steps"]) == (10, 5)
    assert row["us_per_dispatch"] > 0 and row["js_us_per_dispatch"] <= row["us_per_dispatch"]
    assert abs(row["steps_per_s"] * row["us_per_dispatch"] * 10 / 1e6 - 1) < 1e-6


def test_kernel_times_split_a_step_by_kernel():
    """webrwkv.kernel_times: every dispatch of a decode step (2 slots) and of a prefill chunk lands in one
    kernel's group, the groups are the kernels the step's pipelines were made from, and the JSON of
    bench/kernel_times.py has the rows. The times themselves are only meaningful on a GPU."""
    import asyncio
    import subprocess
    import sys
    from pathlib import Path

    from webrwkv.benchmark import random_weights
    from webrwkv.kernel_times import decode_ops, kernel_names, measure, table
    from webrwkv.runtime import Runtime

    info = parse_random("v7:L2:C64")
    rt = Runtime(device(), info, random_weights(info), max_batch=2, token_chunk_size=16)
    rows = [asyncio.run(measure(rt, 2, 2)), asyncio.run(measure(rt, 1, 2, prefill=16))]
    ops = asyncio.run(decode_ops(rt, 2))
    names = kernel_names(rt)
    want: dict = {}
    for op in ops:
        want[names[id(op[0])]] = want.get(names[id(op[0])], 0) + 1
    assert {k: v["dispatches"] for k, v in rows[0]["kernels"].items()} == want
    assert {"sample", "wkv7", "mix", "embed", "gemv K=64"} <= set(want)
    assert rows[1]["what"] == "prefill 16" and {"gemm", "wkv7", "mix"} <= set(rows[1]["kernels"])
    for r in rows:
        assert sum(k["dispatches"] for k in r["kernels"].values()) == r["dispatches"]
        assert r["step_us"] > 0 and r["sum_us"] == round(sum(k["us"] for k in r["kernels"].values()), 1)
    assert "prefill 16: µs (n)" in table(rows) and "B=2: µs (n)" in table(rows)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "kernel_times.py"), "--model",
                          str(root / "models" / "rwkv7-shakespeare.st"), "--batch", "1", "--steps", "2", "--json"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    row = json.loads(out)["rows"][0]
    assert row["what"] == "B=1" and sum(k["dispatches"] for k in row["kernels"].values()) == row["dispatches"]
