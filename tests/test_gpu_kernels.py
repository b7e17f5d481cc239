"""Single kernels against small numpy computations: fp16 GEMV/GEMM (groups, activations, epilogues,
row blocks), and softmax."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_util import device, rel

from webrwkv.formats import FP16
from webrwkv.kernels import Kernels, MatMul, Tuning

ACT = {"none": lambda x: x, "relu2": lambda x: np.maximum(x, 0) ** 2, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
       "tanh": np.tanh}


def _meta(dev, T: int, nout: int):
    m = np.zeros(16, np.uint32)
    m[0], m[2] = T, nout
    buf = dev.buffer(m.nbytes)
    dev.write(buf, 0, m)
    return buf


def _f32(dev, a):
    a = np.ascontiguousarray(a, np.float32)
    buf = dev.buffer(a.nbytes)
    dev.write(buf, 0, a)
    return buf


@pytest.mark.parametrize("T,K,gemv_t,mt_rows,mt_wg,shape", [
    (1, 72, 1, 1, 1, (1, 2)), (1, 2056, 1, 1, 1, (1, 16)), (3, 72, 1, 1, 1, (1, 2)), (3, 2056, 8, 1, 1, (1, 16)),
    (3, 2056, 8, 3, 1, (3, 16)), (3, 2056, 8, 3, 24, (3, 64)), (8, 2056, 8, 3, 43, (1, 16)),
    (8, 72, 8, 1, 1, (1, 2)), (8, 520, 8, 3, 1, (3, 16)), (37, 72, 8, 1, 1, (1, 2)), (37, 2048, 8, 1, 1, (1, 16))])
@pytest.mark.parametrize("subgroups", [0, 1])
def test_grouped_matmul_with_activations_and_gate(T, K, gemv_t, mt_rows, mt_wg, shape, subgroups):
    """T=1: GEMV (K=2056: unrolled loads and a remainder); T <= gemv_t: GEMV serving 8 tokens a workgroup, one
    row a thread or three (40 rows a group: the last row block is partly past the end; K=72: 8 threads a
    row for one token, 2 for several, not 16, so each makes 1 or 4 loads), with 64 threads a row
    where 16 leave fewer than mt_wg workgroups (one row group a workgroup, partials summed in shared memory),
    one row a thread where even 64 do (3 tokens: 2 loads in flight a thread, 8: one); more tokens: tiled GEMM;
    K=2048 with few tiles: GEMM split over K plus a reduction."""
    dev = device()
    k = Kernels(dev, Tuning(gemv_max_t=gemv_t, gemv_subgroups=subgroups, gemv_tpr=16, gemv_rows=4,
                            gemv_mt_rows=mt_rows, gemv_mt_wg=mt_wg, gemv_mt_unroll=2 if T == 3 else 1))
    rng = np.random.default_rng(T)
    P, NR = 3, 40
    W = (rng.standard_normal((P * NR, K)) * 0.2).astype(np.float16).astype(np.float32)
    X = rng.standard_normal((T, P, K)).astype(np.float32)
    Y0 = rng.standard_normal((T, P * NR)).astype(np.float32)
    G = rng.standard_normal((T, P * NR)).astype(np.float32)
    meta, xb, gb = _meta(dev, T, 0), _f32(dev, X), _f32(dev, G)
    acts = ("tanh", "none", "relu2")
    want = np.concatenate([ACT[a](X[:, g] @ W[g * NR:(g + 1) * NR].T) for g, a in enumerate(acts)], axis=1)
    for mode in ("store", "add", "gate"):
        yb = _f32(dev, Y0)
        blocks, Kp = FP16.upload(dev, W, "w")
        mm = MatMul(k, meta, [(blocks[0][0], 0, NR)], Kp, P, NR, xb, yb, x_ts=P * K, x_gs=K, y_ts=P * NR,
                    acts=acts, mode=mode, gate=gb if mode == "gate" else None, g_ts=P * NR, fmt=FP16)
        ops = mm.ops(T)
        assert mm.gemv_shape(8) == shape
        assert mm.gemv_shape(1) == (1, 8 if K == 72 else 16)
        assert len(ops) == (2 if K == 2048 and T > gemv_t else 1)  # the split-K reduction is a second dispatch
        dev.encode(ops)
        got = np.frombuffer(dev.read(yb, 0, Y0.nbytes), np.float32).reshape(T, -1)
        ref = {"store": want, "add": Y0 + want, "gate": Y0 + G * want}[mode]
        assert rel(got, ref) <= 5e-6, mode  # measured <= 1.5e-6


@pytest.mark.parametrize("min_wg,min_k,splits", [(12, 256, (4, 2, 2, 1)), (48, 256, (8, 8, 6, 4)),
                                                 (48, 512, (4, 4, 4, 4))])
def test_split_gemm_serves_every_chunk_size_with_one_kernel(min_wg, min_k, splits):
    """One matrix (K=2048) split over K for chunks of one to four 64-token tiles: into enough slices to make
    about gemm_min_wg workgroups, at most 8 and each at least gemm_min_k of K (12 workgroups: 4 slices for
    one tile, 2 for two or three, none for four). Every split chunk runs the same partial and reduction kernels
    (each works out its split from the chunk), and every chunk matches numpy."""
    dev = device()
    k = Kernels(dev, Tuning(gemm_min_wg=min_wg, gemm_min_k=min_k))
    k.max_rows = 200
    rng = np.random.default_rng(5)
    P, NR, K = 3, 40, 2048
    W = (rng.standard_normal((P * NR, K)) * 0.2).astype(np.float16).astype(np.float32)
    X = rng.standard_normal((200, P, K)).astype(np.float32)
    meta, xb = _meta(dev, 1, 0), _f32(dev, X)
    blocks, Kp = FP16.upload(dev, W, "w")
    yb = _f32(dev, np.zeros((200, P * NR)))
    mm = MatMul(k, meta, [(blocks[0][0], 0, NR)], Kp, P, NR, xb, yb, x_ts=P * K, x_gs=K, y_ts=P * NR,
                acts=("none", "relu2", "tanh"), fmt=FP16)
    pipes = {}
    for T, split in zip((37, 100, 150, 200), splits):
        dev.write(meta, 0, np.array([T], np.uint32))
        ops = mm.ops(T)
        assert mm._split(T) == split
        assert ops[0][2][0] == split  # the dispatch's x size: one 128-row tile of outputs times the slices
        pipes[T] = [op[0] for op in ops]
        dev.encode(ops)
        got = np.frombuffer(dev.read(yb, 0, T * P * NR * 4), np.float32).reshape(T, -1)
        want = np.concatenate([ACT[a](X[:T, g] @ W[g * NR:(g + 1) * NR].T)
                               for g, a in enumerate(("none", "relu2", "tanh"))], axis=1)
        assert rel(got, want) <= 5e-6, T  # measured <= 1.5e-6
    split_pipes = [pipes[T] for T, n in zip(pipes, splits) if n > 1]
    assert all(p == split_pipes[0] and len(p) == 2 for p in split_pipes)
    if splits[-1] == 1:
        assert len(pipes[200]) == 1 and pipes[200][0] is not pipes[37][0]  # the unsplit kernel stores itself


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
@pytest.mark.parametrize("mt_rows", [1, 3])
def test_quantized_gemv_for_several_tokens(fmt, mt_rows):
    """The int8 / NF4 GEMV serving 5 tokens a workgroup, one row a thread or three, against numpy on the
    weights quantized and dequantized by webrwkv.quant (the formats' reference)."""
    from quant_util import round_trip
    from webrwkv.formats import weight_format

    dev = device()
    k = Kernels(dev, Tuning(gemv_tpr=16, gemv_rows=4, gemv_mt_rows=mt_rows, gemv_mt_wg=1))
    rng = np.random.default_rng(5)
    T, N, K = 5, 40, 520  # K: 4 loads a thread, so three rows a thread are used
    W = (rng.standard_normal((N, K)) * 0.2).astype(np.float32)
    X = rng.standard_normal((T, K)).astype(np.float32)
    f = weight_format(fmt)
    blocks, Kp = f.upload_cpu(dev, W, "w")
    yb = dev.buffer(4 * T * N)
    mm = MatMul(k, _meta(dev, T, 0), blocks, Kp, 1, N, _f32(dev, X), yb, x_ts=K, y_ts=N, fmt=f)
    assert mm.gemv_shape(8)[0] == mt_rows
    dev.encode(mm.ops(T))
    got = np.frombuffer(dev.read(yb, 0, 4 * T * N), np.float32).reshape(T, N)
    assert rel(got, X @ round_trip(fmt, W).T) <= 5e-6


@pytest.mark.parametrize("N,K,T,shape", [(2048, 2048, 8, (4, 128)), (8192, 2048, 8, (4, 32)),
                                         (2048, 8192, 8, (4, 128)), (2048, 256, 8, (1, 8)), (2048, 64, 5, (1, 2)),
                                         (2048, 2048, 1, (1, 32)), (300, 2048, 8, (1, 32))])
def test_gemv_at_the_default_tuning_on_the_decode_shapes_of_v7_L24(N, K, T, shape):
    """The GEMV as a decode step of v7 L24 C2048 runs it (default tuning: output / FFN key / FFN value /
    LoRA up-projections, 8 slots or 1; the output 4 rows a thread with 128 threads a row, each making 2 loads),
    with this device's subgroups; last a matrix too short for 4 rows a thread. On a 32-lane GPU the 8-sum
    row groups of the last case finish their reduction with a butterfly; on an 8-lane CPU the 32-sum ones stop
    early."""
    dev = device()
    k = Kernels(dev)
    rng = np.random.default_rng(N + K + T)
    W = (rng.standard_normal((N, K)) * 0.05).astype(np.float16).astype(np.float32)
    X = rng.standard_normal((T, K)).astype(np.float32)
    blocks, Kp = FP16.upload(dev, W, "w")
    yb = dev.buffer(4 * T * N)
    mm = MatMul(k, _meta(dev, T, 0), blocks, Kp, 1, N, _f32(dev, X), yb, x_ts=K, y_ts=N, fmt=FP16)
    assert mm.gemv_shape(8 if T > 1 else 1) == shape
    dev.encode(mm.ops(T))
    got = np.frombuffer(dev.read(yb, 0, 4 * T * N), np.float32).reshape(T, N)
    assert rel(got, X.astype(np.float64) @ W.T.astype(np.float64)) <= 1e-6  # measured <= 1.2e-7 (H200, lavapipe)


@pytest.mark.parametrize("limit", [256, 1024])
@pytest.mark.parametrize("T", [1, 8])
def test_gemv_workgroup_fits_the_device_limit(monkeypatch, T, limit):
    """The browser's GEMV tuning (64 threads a row, 8 rows: 512 threads) on a device that allows 256 threads a
    workgroup (WebGPU's default) gets 4 rows a workgroup, and on one that allows 1024 all 8; both match numpy."""
    dev = device()
    if dev.limits["max_workgroup_invocations"] < limit:
        pytest.fail(f"this device allows {dev.limits['max_workgroup_invocations']} threads a workgroup")
    monkeypatch.setitem(dev.limits, "max_workgroup_invocations", limit)
    k = Kernels(dev, Tuning(gemv_tpr=64, gemv_rows=8, gemv_mt_rows=1))
    rng = np.random.default_rng(T + limit)
    N, K = 300, 2048
    W = (rng.standard_normal((N, K)) * 0.05).astype(np.float16).astype(np.float32)
    X = rng.standard_normal((T, K)).astype(np.float32)
    blocks, Kp = FP16.upload(dev, W, "w")
    yb = dev.buffer(4 * T * N)
    mm = MatMul(k, _meta(dev, T, 0), blocks, Kp, 1, N, _f32(dev, X), yb, x_ts=K, y_ts=N, fmt=FP16)
    assert mm.gemv_wg() == min(512, limit) and mm.gemv_shape(8 if T > 1 else 1) == (1, 64)
    ops = mm.ops(T)
    assert ops[0][2][0] == -(-N // (mm.gemv_wg() // 64))  # workgroups: rows / rows a workgroup
    dev.encode(ops)
    got = np.frombuffer(dev.read(yb, 0, 4 * T * N), np.float32).reshape(T, N)
    assert rel(got, X.astype(np.float64) @ W.T.astype(np.float64)) <= 1e-6


@pytest.mark.parametrize("T", [1, 9])
def test_row_blocks_cover_a_matrix_larger_than_the_binding_limit(T):
    from webrwkv.gpu import open_device

    dev = open_device("native", max_binding_override=4096)
    k = Kernels(dev)
    rng = np.random.default_rng(1)
    N, K = 300, 64  # 38 KB of fp16: 10 blocks of 32 rows
    W = rng.standard_normal((N, K)).astype(np.float16).astype(np.float32)
    X = rng.standard_normal((T, K)).astype(np.float32)
    blocks, Kp = FP16.upload(dev, W, "w")
    assert len(blocks) == 10 and all(n * K * 2 <= 4096 for _, _, n in blocks)
    yb = dev.buffer(4 * T * N)
    mm = MatMul(k, _meta(dev, 0, T), blocks, Kp, 1, N, _f32(dev, X), yb, x_ts=K, y_ts=N, tsrc=2, fmt=FP16)
    dev.encode(mm.ops(T))
    got = np.frombuffer(dev.read(yb, 0, 4 * T * N), np.float32).reshape(T, N)
    assert rel(got, X @ W.T) <= 1e-5


def test_softmax_rows():
    dev = device()
    k = Kernels(dev)
    V, n = 1000, 3
    x = np.random.default_rng(2).standard_normal((n, V)).astype(np.float32) * 10
    buf = _f32(dev, x)
    pipe = k.get("softmax", V=V, WG=64)
    dev.encode([(pipe, dev.bind(pipe, [_meta(dev, n, n), buf]), (n, 1, 1))])
    got = np.frombuffer(dev.read(buf, 0, x.nbytes), np.float32).reshape(n, V)
    e = np.exp(x - x.max(1, keepdims=True))
    assert rel(got, e / e.sum(1, keepdims=True)) <= 1e-5


@pytest.mark.parametrize("mt,tfirst", [(4, 0), (4, 1), (2, 1)])
def test_gemv_in_token_groups_in_either_grid_order(mt, tfirst):
    """7 tokens served `mt` a workgroup (the last group short), the grid ordered by row block or, with
    gemv_mt_tfirst, by token group first (a row block's groups side by side); every output matches numpy."""
    dev = device()
    k = Kernels(dev, Tuning(gemv_tpr=16, gemv_rows=4, gemv_mt=mt, gemv_mt_tfirst=tfirst))
    rng = np.random.default_rng(mt + tfirst)
    T, P, NR, K = 7, 3, 40, 520
    W = (rng.standard_normal((P * NR, K)) * 0.2).astype(np.float16).astype(np.float32)
    X = rng.standard_normal((T, P, K)).astype(np.float32)
    blocks, Kp = FP16.upload(dev, W, "w")
    yb = _f32(dev, np.zeros((T, P * NR)))
    mm = MatMul(k, _meta(dev, T, 0), [(blocks[0][0], 0, NR)], Kp, P, NR, _f32(dev, X), yb, x_ts=P * K, x_gs=K,
                y_ts=P * NR, fmt=FP16)
    ops = mm.ops(T)
    groups = -(-T // mt)
    assert [op[2][0 if tfirst else 1] for op in ops] == [groups] and ops[0][2][2] == P
    dev.encode(ops)
    got = np.frombuffer(dev.read(yb, 0, T * P * NR * 4), np.float32).reshape(T, -1)
    want = np.concatenate([X[:, g] @ W[g * NR:(g + 1) * NR].T for g in range(P)], axis=1)
    assert rel(got, want) <= 1e-6  # measured <= 1.5e-7 (lavapipe)
