"""NF4 weight quantization: codes, table and round-trip bounds in numpy, and the NF4 GPU kernels and runtime
against the numpy reference run on the dequantized weights (GEMM chunks and GEMV tokens), for every version."""

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
from webrwkv.quant import NF4_LEVELS, dequantize_nf4, pack_nf4, quantize_nf4

ROOT = Path(__file__).resolve().parents[1]
HALF_GAP = float(np.diff(NF4_LEVELS).max()) / 2


def test_table_is_the_normal_float_quantiles():
    # 8 positive and 7 negative quantiles of N(0, 1), each side scaled to end at 1 (QLoRA's NF4)
    from statistics import NormalDist

    # quantiles from 1 - off down to the median: 8 for the positive side, 7 for the negative one
    off = 0.5 * (1 / 32 + 1 / 30)
    pos = [NormalDist().inv_cdf(p) for p in np.linspace(1 - off, 0.5, 9)[:-1]]
    neg = [-NormalDist().inv_cdf(p) for p in np.linspace(1 - off, 0.5, 8)[:-1]]
    want = sorted(v / pos[0] for v in pos + [0.0] + neg)
    assert len(NF4_LEVELS) == 16 and NF4_LEVELS[7] == 0 and NF4_LEVELS[0] == -1 and NF4_LEVELS[15] == 1
    assert np.allclose(np.sort(NF4_LEVELS), want, atol=2e-6)


def test_codes_on_hand_made_values():
    w = np.zeros((2, 64), np.float32)
    w[0, :16] = NF4_LEVELS * 3.0  # every level exactly, block scale 3
    w[0, 16:20] = [0.03, -0.05, 0.7, -0.46]  # between levels: nearest wins
    w[1, 0] = -2.0
    codes, s = quantize_nf4(w)
    assert codes.dtype == np.uint8 and s.dtype == np.float32 and s.shape == (2, 1)
    assert s[0, 0] == 3.0 and s[1, 0] == 2.0
    assert codes[0, :16].tolist() == list(range(16))
    # 0.01, -0.0167, 0.2333, -0.1533 of the scale -> levels 0.0, 0.0, 0.2461, -0.1848
    assert codes[0, 16:20].tolist() == [7, 7, 10, 5]
    assert codes[1, 0] == 0 and np.all(codes[1, 1:] == 7) and np.all(codes[0, 20:] == 7)
    # packing: weight k in bits 4*(k%8) of word k/8
    words = pack_nf4(codes)
    assert words.dtype == np.uint32 and words.shape == (2, 8)
    assert words[0, 0] == 0x76543210 and words[0, 1] == 0xFEDCBA98 and words[1, 0] == 0x77777770


def test_round_trip_error_within_half_the_largest_gap():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 200)).astype(np.float32) * rng.uniform(0.01, 10, (37, 1)).astype(np.float32)
    w[:, 64:128] *= 50  # blocks of one row get their own scales
    w[3] = 0.0
    codes, s = quantize_nf4(w)
    assert s.shape == (37, 4) and codes.shape == w.shape and codes.max() <= 15
    dq = dequantize_nf4(codes, s)
    bound = np.repeat(s, 64, axis=1)[:, :200] * HALF_GAP
    assert np.all(np.abs(w - dq) <= bound * (1 + 1e-5))
    assert np.array_equal(dq[3], np.zeros(200, np.float32))
    # each block's largest magnitude is kept exactly (code 0 or 15)
    big = np.abs(w[:, :64]).argmax(axis=1)
    assert np.allclose(np.abs(dq[np.arange(37), big]), np.abs(w[np.arange(37), big]))
    # and the coarse 4-bit levels really lose precision (an error the int8 path would not make)
    assert np.abs(w - dq).max() > s.max() / 127


def test_vector_is_rejected():
    with pytest.raises(WebRwkvError):
        quantize_nf4(np.ones(4, np.float32))


def _buf(dev, a):
    a = np.ascontiguousarray(a)
    buf = dev.buffer(a.nbytes)
    dev.write(buf, 0, a)
    return buf


def nf4_round_trip(w):
    return dequantize_nf4(*quantize_nf4(w))


@pytest.mark.parametrize("T,K", [(1, 72), (1, 2056), (37, 72), (37, 2048)])
@pytest.mark.parametrize("subgroups", [0, 1])
def test_nf4_grouped_matmul_kernels(T, K, subgroups):
    """GEMV (unrolled loads and a remainder), tiled GEMM, and GEMM split over K, with three groups
    sharing one NF4 buffer, against numpy on the dequantized matrix."""
    from webrwkv.kernels import Kernels, MatMul, Tuning
    from webrwkv.quant import upload_nf4

    dev = device()
    k = Kernels(dev, Tuning(gemv_max_t=1, gemv_subgroups=subgroups, gemv_tpr=16, gemv_rows=4))
    rng = np.random.default_rng(T + K)
    P, NR = 3, 40
    W = rng.standard_normal((P * NR, K)).astype(np.float32) * rng.uniform(0.01, 1, (P * NR, 1)).astype(np.float32)
    X = rng.standard_normal((T, P, K)).astype(np.float32)
    Y0 = rng.standard_normal((T, P * NR)).astype(np.float32)
    meta = _buf(dev, np.array([T, 0, 0, 0] + [0] * 12, np.uint32))
    Wd = nf4_round_trip(W)
    want = np.concatenate([np.tanh(X[:, g] @ Wd[g * NR:(g + 1) * NR].T) for g in range(P)], axis=1)
    yb = _buf(dev, Y0)
    blocks, Kp = upload_nf4(dev, W, "w")
    mm = MatMul(k, meta, [(blocks[0][0], 0, NR)], Kp, P, NR, _buf(dev, X), yb, x_ts=P * K, x_gs=K, y_ts=P * NR,
                acts=("tanh",), mode="add", nf4=True)
    ops = mm.ops(T)
    assert len(ops) == (2 if K == 2048 and T > 1 else 1)
    dev.encode(ops)
    got = np.frombuffer(dev.read(yb, 0, Y0.nbytes), np.float32).reshape(T, -1)
    assert rel(got, Y0 + want) <= 2e-5


@pytest.mark.parametrize("T", [1, 9])
def test_nf4_row_blocks_past_the_binding_limit(T):
    from webrwkv.gpu import open_device
    from webrwkv.kernels import Kernels, MatMul
    from webrwkv.quant import nf4_bytes, upload_nf4

    device()
    dev = open_device("native", max_binding_override=4096)
    rng = np.random.default_rng(5)
    N, K = 300, 200
    W = rng.standard_normal((N, K)).astype(np.float32)
    X = rng.standard_normal((T, K)).astype(np.float32)
    blocks, Kp = upload_nf4(dev, W, "w")
    # 100 bytes of codes and 4 scales a row: 35 rows fit in 4096 bytes
    assert len(blocks) == 9 and all(nf4_bytes(n, Kp) <= 4096 for _, _, n in blocks)
    yb = dev.buffer(4 * T * N)
    meta = _buf(dev, np.array([0, 0, T, 0] + [0] * 12, np.uint32))
    mm = MatMul(Kernels(dev), meta, blocks, Kp, 1, N, _buf(dev, X), yb, x_ts=K, y_ts=N, tsrc=2, nf4=True)
    dev.encode(mm.ops(T))
    got = np.frombuffer(dev.read(yb, 0, 4 * T * N), np.float32).reshape(T, N)
    assert rel(got, X @ nf4_round_trip(W).T) <= 1e-5


@functools.lru_cache(maxsize=None)
def dequantized_model(version: str):
    """The fp16 golden model with every layer matrix replaced by its NF4 round trip (what the GPU uses)."""
    info, w = fp16_model(version)
    out = dict(w)
    for k, v in w.items():
        if k.startswith("blocks.") and v.ndim >= 2:
            out[k] = nf4_round_trip(v)
    return info, out


@functools.lru_cache(maxsize=None)
def nf4_runtime(version: str):
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    return Runtime(device(), info, w, max_batch=1, token_chunk_size=128, quant="nf4")


def prompt(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 256, n).tolist()


@pytest.mark.parametrize("version", VERSIONS)
def test_nf4_chunks_match_dequantized_reference(version):
    info, w = dequantized_model(version)
    toks = prompt(40, seed=2)
    want, _ = ref.forward(w, info, toks, all_logits=True)
    rt = nf4_runtime(version)
    for chunk in (40, 16):
        rt.reset(0)
        rt.token_chunk_size = chunk
        rt.push(0, toks)
        got = drain(rt, 0, all_logits=True)
        assert rel(got, want) <= 1e-3, (chunk, rel(got, want))
    rt.token_chunk_size = 128
    # the NF4 weights really change the result (the test would notice fp16 weights being used)
    fp_want, _ = ref.forward(fp16_model(version)[1], info, toks, all_logits=True)
    assert rel(fp_want, want) > 1e-3


@pytest.mark.parametrize("version", VERSIONS)
def test_nf4_token_by_token_matches_dequantized_reference(version):
    info, w = dequantized_model(version)
    toks = prompt(40, seed=3)
    want, _ = ref.forward(w, info, toks, all_logits=True)
    rt = nf4_runtime(version)
    rt.reset(0)
    got = []
    for t in toks:
        rt.push(0, [t])
        got.append(drain(rt, 0))
    assert rel(np.stack(got), want) <= 1e-3


@pytest.mark.parametrize("version", ["v6", "v7"])
def test_nf4_weight_bytes_about_a_quarter(version):
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    fp = Runtime(device(), info, w, max_batch=1, token_chunk_size=8)
    q4 = nf4_runtime(version)
    head = 2 * info.vocab * info.n_embd * 2  # embedding and head stay fp16
    layers_fp, layers_q4 = fp.weight_bytes - head, q4.weight_bytes - head
    # half a byte per weight against two, plus a 4-byte scale per 64 weights (1/32 of fp16)
    assert 0.25 <= layers_q4 / layers_fp <= 0.25 + 1 / 32 + 0.01, (layers_q4, layers_fp)


def test_cli_generate_nf4_on_bundled_model():
    device()
    out = subprocess.run([sys.executable, "-m", "webrwkv", "generate", "--quant", "nf4", "--temperature", "0",
                          "--max-tokens", "16", "--json", "--prompt", "First Citizen:"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(res["ids"]) == 16 and res["stop_reason"] == "max_tokens"
    assert isinstance(res["text"], str) and res["text"]


def nf4_kernel_sources() -> list[str]:
    """The WGSL of the NF4 GEMV (with and without subgroups), tiled GEMM and split-K GEMM pipelines."""
    from webrwkv.kernels import Kernels, MatMul, Tuning
    from webrwkv.quant import upload_nf4

    dev = device()
    seen: dict[str, None] = {}
    real = dev.pipeline
    dev.pipeline = lambda wgsl, entry="main", constants=None: seen.setdefault(wgsl) or real(wgsl, entry, constants)
    try:
        dev._webrwkv_pipelines = {}
        for sub in (0, 1):
            k = Kernels(dev, Tuning(gemv_subgroups=sub))
            meta = _buf(dev, np.array([37] + [0] * 15, np.uint32))
            for K in (64, 2048):  # K = 2048 splits over K
                blocks, kp = upload_nf4(dev, np.ones((40, K), np.float32), "w")
                mm = MatMul(k, meta, blocks, kp, 1, 40, dev.buffer(4 * K * 37), dev.buffer(4 * 40 * 37),
                            x_ts=K, y_ts=40, nf4=True)
                mm.ops(1), mm.ops(37)
    finally:
        del dev.pipeline
        dev._webrwkv_pipelines = {}
    return [("enable subgroups;\n" + s) if "subgroup" in s else s for s in seen if "NF4" in s]


def test_nf4_kernels_compile_in_chromium(tmp_path):
    import http.server
    import shutil
    import threading

    from test_gpu_wgsl_browser import CHROMIUM, DRIVER, PAGE

    playwright = ROOT / "node_modules" / "playwright"
    if not (Path(CHROMIUM).exists() and playwright.is_dir() and shutil.which("node")):
        pytest.skip("needs Chromium and the npm playwright package (run the project's setup)")
    srcs = nf4_kernel_sources()
    assert len(srcs) >= 5  # GEMV x2 (K), GEMM, split-K GEMM x2 (K slices), GEMV with subgroups if any
    (tmp_path / "index.html").write_text(PAGE)
    (tmp_path / "srcs.json").write_text(json.dumps(srcs))
    (tmp_path / "driver.js").write_text(DRIVER)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/index.html"
        res = subprocess.run(["node", str(tmp_path / "driver.js"), str(playwright), CHROMIUM, url,
                              str(tmp_path / "srcs.json")], capture_output=True, text=True, timeout=240)
    finally:
        srv.shutdown()
    assert res.returncode == 0, res.stderr[-2000:]
    errors = json.loads(res.stdout.strip().splitlines()[-1])
    assert not any(errors), [e for e in errors if e]
