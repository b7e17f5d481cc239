"""Int8 weight quantization: numpy round trip bounds, and the int8 GPU runtime against the numpy
reference run on the dequantized weights (GEMM chunks and GEMV tokens), for every version."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gpu_util import VERSIONS, device, drain, fp16_model, rel

from webrwkv import reference as ref
from webrwkv.errors import WebRwkvError
from webrwkv.quant import dequantize_int8, quantize_int8

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_error_within_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 100)).astype(np.float32) * rng.uniform(0.01, 10, (37, 1)).astype(np.float32)
    w[3] = 0.0  # an all-zero row (padding) must stay zero
    q, s = quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (37,)
    dq = dequantize_int8(q, s)
    assert np.all(np.abs(w - dq) <= s[:, None] / 2 * (1 + 1e-5) + 1e-30)
    assert np.array_equal(dq[3], np.zeros(100, np.float32))
    # the row's largest magnitude maps to +-127 exactly
    assert np.all(np.abs(q).max(axis=1)[s > 0] == 127)


def test_round_trip_stacked_matrices_per_last_axis():
    w = np.random.default_rng(1).standard_normal((5, 8, 16)).astype(np.float32)
    q, s = quantize_int8(w)
    assert q.shape == w.shape and s.shape == (5, 8)
    q2, s2 = quantize_int8(w[2])
    assert np.array_equal(q[2], q2) and np.array_equal(s[2], s2)
    assert np.all(np.abs(w - dequantize_int8(q, s)) <= s[..., None] / 2 * (1 + 1e-5))


def test_vector_is_rejected():
    with pytest.raises(WebRwkvError):
        quantize_int8(np.ones(4, np.float32))


def _buf(dev, a):
    a = np.ascontiguousarray(a)
    buf = dev.buffer(a.nbytes)
    dev.write(buf, 0, a)
    return buf


@pytest.mark.parametrize("T,K", [(1, 72), (1, 2056), (37, 72), (37, 2048)])
@pytest.mark.parametrize("subgroups", [0, 1])
def test_int8_grouped_matmul_kernels(T, K, subgroups):
    """GEMV (with unrolled loads and a remainder), tiled GEMM, and GEMM split over K, with three
    groups sharing one int8 buffer, against numpy on the dequantized matrix."""
    from webrwkv.kernels import Kernels, MatMul, Tuning
    from webrwkv.quant import upload_int8

    dev = device()
    k = Kernels(dev, Tuning(gemv_max_t=1, gemv_subgroups=subgroups, gemv_tpr=16, gemv_rows=4))
    rng = np.random.default_rng(T + K)
    P, NR = 3, 40
    W = rng.standard_normal((P * NR, K)).astype(np.float32) * rng.uniform(0.01, 1, (P * NR, 1)).astype(np.float32)
    X = rng.standard_normal((T, P, K)).astype(np.float32)
    Y0 = rng.standard_normal((T, P * NR)).astype(np.float32)
    meta = _buf(dev, np.array([T, 0, 0, 0] + [0] * 12, np.uint32))
    xb = _buf(dev, X)
    Wd = dequantize_int8(*quantize_int8(W))
    want = np.concatenate([np.tanh(X[:, g] @ Wd[g * NR:(g + 1) * NR].T) for g in range(P)], axis=1)
    yb = _buf(dev, Y0)
    blocks, Kp = upload_int8(dev, W, "w")
    mm = MatMul(k, meta, [(blocks[0][0], 0, NR)], Kp, P, NR, xb, yb, x_ts=P * K, x_gs=K, y_ts=P * NR,
                acts=("tanh",), mode="add", int8=True)
    ops = mm.ops(T)
    assert len(ops) == (2 if K == 2048 and T > 1 else 1)
    dev.encode(ops)
    got = np.frombuffer(dev.read(yb, 0, Y0.nbytes), np.float32).reshape(T, -1)
    assert rel(got, Y0 + want) <= 2e-5


@pytest.mark.parametrize("T", [1, 9])
def test_int8_row_blocks_past_the_binding_limit(T):
    from webrwkv.gpu import open_device
    from webrwkv.kernels import Kernels, MatMul
    from webrwkv.quant import upload_int8

    device()
    dev = open_device("native", max_binding_override=4096)
    rng = np.random.default_rng(5)
    N, K = 300, 64
    W = rng.standard_normal((N, K)).astype(np.float32)
    X = rng.standard_normal((T, K)).astype(np.float32)
    blocks, Kp = upload_int8(dev, W, "w")
    assert len(blocks) == 5 and all(n * (K + 4) <= 4096 for _, _, n in blocks)
    yb = dev.buffer(4 * T * N)
    meta = _buf(dev, np.array([0, 0, T, 0] + [0] * 12, np.uint32))
    mm = MatMul(Kernels(dev), meta, blocks, Kp, 1, N, _buf(dev, X), yb, x_ts=K, y_ts=N, tsrc=2, int8=True)
    dev.encode(mm.ops(T))
    got = np.frombuffer(dev.read(yb, 0, 4 * T * N), np.float32).reshape(T, N)
    assert rel(got, X @ dequantize_int8(*quantize_int8(W)).T) <= 1e-5


@functools.lru_cache(maxsize=None)
def dequantized_model(version: str):
    """The fp16 golden model with every layer matrix replaced by its int8 round trip (what the GPU uses)."""
    info, w = fp16_model(version)
    out = dict(w)
    for k, v in w.items():
        if k.startswith("blocks.") and v.ndim >= 2:
            out[k] = dequantize_int8(*quantize_int8(v))
    return info, out


@functools.lru_cache(maxsize=None)
def int8_runtime(version: str):
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    return Runtime(device(), info, w, max_batch=1, token_chunk_size=128, quant="int8")


def prompt(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 256, n).tolist()


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_chunks_match_dequantized_reference(version):
    info, w = dequantized_model(version)
    toks = prompt(40, seed=2)
    want, _ = ref.forward(w, info, toks, all_logits=True)
    rt = int8_runtime(version)
    for chunk in (40, 16):
        rt.reset(0)
        rt.token_chunk_size = chunk
        rt.push(0, toks)
        got = drain(rt, 0, all_logits=True)
        assert rel(got, want) <= 1e-3, (chunk, rel(got, want))
    rt.token_chunk_size = 128
    # the int8 weights really change the result (the test would notice fp16 weights being used)
    fp_want, _ = ref.forward(fp16_model(version)[1], info, toks, all_logits=True)
    assert rel(fp_want, want) > 1e-3


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_token_by_token_matches_dequantized_reference(version):
    info, w = dequantized_model(version)
    toks = prompt(40, seed=3)
    want, _ = ref.forward(w, info, toks, all_logits=True)
    rt = int8_runtime(version)
    rt.reset(0)
    got = []
    for t in toks:
        rt.push(0, [t])
        got.append(drain(rt, 0))
    assert rel(np.stack(got), want) <= 1e-3


@pytest.mark.parametrize("version", ["v6", "v7"])
def test_int8_weight_bytes_about_half(version):
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    fp = Runtime(device(), info, w, max_batch=1, token_chunk_size=8)
    q8 = int8_runtime(version)
    head = 2 * info.vocab * info.n_embd * 2  # embedding and head stay fp16
    layers_fp, layers_q8 = fp.weight_bytes - head, q8.weight_bytes - head
    assert 0.5 <= layers_q8 / layers_fp <= 0.56, (layers_q8, layers_fp)
    assert q8.weight_bytes < fp.weight_bytes


def test_cli_generate_int8_on_bundled_model():
    device()
    out = subprocess.run([sys.executable, "-m", "webrwkv", "generate", "--quant", "int8", "--temperature", "0",
                          "--max-tokens", "16", "--json", "--prompt", "First Citizen:"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(res["ids"]) == 16 and res["stop_reason"] == "max_tokens"
    assert isinstance(res["text"], str) and res["text"]
