"""Shared harness for the quantized-weight tests: GPU matmul kernels and the runtime against the numpy
reference run on the dequantized weights, for any quantization ("int8" or "nf4")."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from gpu_util import device, drain, fp16_model, one_by_one, rel

from webrwkv import quant
from webrwkv.formats import weight_format
from webrwkv import reference as ref

ROOT = Path(__file__).resolve().parents[1]


def round_trip(kind: str, w: np.ndarray) -> np.ndarray:
    """The weights the GPU really multiplies by: quantized then dequantized."""
    return getattr(quant, f"dequantize_{kind}")(*getattr(quant, f"quantize_{kind}")(w))


def buf(dev, a):
    a = np.ascontiguousarray(a)
    b = dev.buffer(a.nbytes)
    dev.write(b, 0, a)
    return b


# the quantized GPU runtime against the reference on the dequantized weights: measured <= 5.9e-7 (GEMV)
TOL = 5e-6


def prompt(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 256, n).tolist()


def check_grouped_matmul(kind: str, T: int, K: int, subgroups: int) -> None:
    """GEMV / tiled GEMM / split-K GEMM with three groups sharing one quantized buffer, against numpy."""
    from webrwkv.kernels import Kernels, MatMul, Tuning

    dev = device()
    k = Kernels(dev, Tuning(gemv_max_t=1, gemv_subgroups=subgroups, gemv_tpr=16, gemv_rows=4))
    rng = np.random.default_rng(T + K)
    P, NR = 3, 40
    W = rng.standard_normal((P * NR, K)).astype(np.float32) * rng.uniform(0.01, 1, (P * NR, 1)).astype(np.float32)
    X = rng.standard_normal((T, P, K)).astype(np.float32)
    Y0 = rng.standard_normal((T, P * NR)).astype(np.float32)
    meta = buf(dev, np.array([T, 0, 0, 0] + [0] * 12, np.uint32))
    xb = buf(dev, X)
    Wd = round_trip(kind, W)
    want = np.concatenate([np.tanh(X[:, g] @ Wd[g * NR:(g + 1) * NR].T) for g in range(P)], axis=1)
    yb = buf(dev, Y0)
    blocks, Kp = weight_format(kind).upload_cpu(dev, W, "w")
    mm = MatMul(k, meta, [(blocks[0][0], 0, NR)], Kp, P, NR, xb, yb, x_ts=P * K, x_gs=K, y_ts=P * NR,
                acts=("tanh",), mode="add", fmt=weight_format(kind))
    ops = mm.ops(T)
    assert len(ops) == (2 if K == 2048 and T > 1 else 1)
    dev.encode(ops)
    got = np.frombuffer(dev.read(yb, 0, Y0.nbytes), np.float32).reshape(T, -1)
    assert rel(got, Y0 + want) <= 5e-6  # measured <= 1.5e-6


def check_row_blocks(kind: str, T: int, K: int, check_blocks: Callable[[list, int], None]) -> None:
    """A matrix split into row blocks by a 4096-byte binding limit, against numpy."""
    from webrwkv.gpu import open_device
    from webrwkv.kernels import Kernels, MatMul

    device()
    dev = open_device("native", max_binding_override=4096)
    rng = np.random.default_rng(5)
    N = 300
    W = rng.standard_normal((N, K)).astype(np.float32)
    X = rng.standard_normal((T, K)).astype(np.float32)
    blocks, Kp = weight_format(kind).upload_cpu(dev, W, "w")
    check_blocks(blocks, Kp)
    yb = dev.buffer(4 * T * N)
    meta = buf(dev, np.array([0, 0, T, 0] + [0] * 12, np.uint32))
    mm = MatMul(Kernels(dev), meta, blocks, Kp, 1, N, buf(dev, X), yb, x_ts=K, y_ts=N, tsrc=2, fmt=weight_format(kind))
    dev.encode(mm.ops(T))
    got = np.frombuffer(dev.read(yb, 0, 4 * T * N), np.float32).reshape(T, N)
    assert rel(got, X @ round_trip(kind, W).T) <= 1e-6  # measured <= 2.7e-7


@functools.lru_cache(maxsize=None)
def dequantized_model(kind: str, version: str):
    """The fp16 golden model with every layer matrix replaced by its round trip (what the GPU uses)."""
    from webrwkv.models import VERSIONS

    info, w = fp16_model(version)
    tables = getattr(VERSIONS[version], "FP16_TABLES", ())  # matrices a kernel reads as fp16 rows itself
    out = dict(w)
    for k, v in w.items():
        if k.startswith("blocks.") and v.ndim >= 2 and k.split(".", 2)[2] not in tables:
            out[k] = round_trip(kind, v)
    return info, out


@functools.lru_cache(maxsize=None)
def quant_runtime(kind: str, version: str):
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    return Runtime(device(), info, w, max_batch=1, token_chunk_size=128, quant=kind)


def check_chunks(kind: str, version: str) -> None:
    """GEMM chunks of 40 and 16 tokens against the reference on the dequantized weights."""
    info, w = dequantized_model(kind, version)
    toks = prompt(40, seed=2)
    want, _ = ref.forward(w, info, toks, all_logits=True)
    rt = quant_runtime(kind, version)
    for chunk in (40, 16):
        rt.reset(0)
        rt.token_chunk_size = chunk
        rt.push(0, toks)
        got = drain(rt, 0, all_logits=True)
        assert rel(got, want) <= TOL, (chunk, rel(got, want))
    rt.token_chunk_size = 128
    # the quantized weights really change the result (the test would notice fp16 weights being used)
    fp_want, _ = ref.forward(fp16_model(version)[1], info, toks, all_logits=True)
    assert rel(fp_want, want) > 1e-3


def check_token_by_token(kind: str, version: str) -> None:
    """One token a step (GEMV) against the reference on the dequantized weights."""
    info, w = dequantized_model(kind, version)
    toks = prompt(40, seed=3)
    want, _ = ref.forward(w, info, toks, all_logits=True)
    assert rel(one_by_one(quant_runtime(kind, version), toks), want) <= TOL


def check_cli_generate(kind: str) -> None:
    device()
    out = subprocess.run([sys.executable, "-m", "webrwkv", "generate", "--quant", kind, "--temperature", "0",
                          "--max-tokens", "16", "--json", "--prompt", "First Citizen:"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(res["ids"]) == 16 and res["stop_reason"] == "max_tokens"
    assert isinstance(res["text"], str) and res["text"]
