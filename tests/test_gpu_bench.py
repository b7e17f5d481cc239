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
