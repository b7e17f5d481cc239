"""NF4 weight quantization: codes, table and round-trip bounds in numpy, and the NF4 GPU kernels and runtime
against the numpy reference run on the dequantized weights (GEMM chunks and GEMV tokens), for every version."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_util import VERSIONS, device, fp16_model
from quant_util import (buf, check_chunks, check_cli_generate, check_grouped_matmul, check_row_blocks,
                        check_token_by_token, quant_runtime)

from webrwkv.errors import WebRwkvError
from webrwkv.quant import NF4_LEVELS, dequantize_nf4, pack_nf4, quantize_nf4

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


@pytest.mark.parametrize("T,K", [(1, 72), (1, 2056), (37, 72), (37, 2048)])
@pytest.mark.parametrize("subgroups", [0, 1])
def test_nf4_grouped_matmul_kernels(T, K, subgroups):
    """GEMV (unrolled loads and a remainder), tiled GEMM, and GEMM split over K, with three groups
    sharing one NF4 buffer, against numpy on the dequantized matrix."""
    check_grouped_matmul("nf4", T, K, subgroups)


@pytest.mark.parametrize("T", [1, 9])
def test_nf4_row_blocks_past_the_binding_limit(T):
    from webrwkv.formats import NF4_FORMAT

    def check_blocks(blocks, Kp):
        # 100 bytes of codes and 4 scales a row: 35 rows fit in 4096 bytes
        assert len(blocks) == 9 and all(NF4_FORMAT.nbytes(n, Kp) <= 4096 for _, _, n in blocks)

    check_row_blocks("nf4", T, 200, check_blocks)


@pytest.mark.parametrize("version", VERSIONS)
def test_nf4_chunks_match_dequantized_reference(version):
    check_chunks("nf4", version)


@pytest.mark.parametrize("version", VERSIONS)
def test_nf4_token_by_token_matches_dequantized_reference(version):
    check_token_by_token("nf4", version)


@pytest.mark.parametrize("version", ["v6", "v7"])
def test_nf4_weight_bytes_about_a_quarter(version):
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    fp = Runtime(device(), info, w, max_batch=1, token_chunk_size=8)
    q4 = quant_runtime("nf4", version)
    head = 2 * info.vocab * info.n_embd * 2  # embedding and head stay fp16
    layers_fp, layers_q4 = fp.weight_bytes - head, q4.weight_bytes - head
    # half a byte per weight against two, plus a 4-byte scale per 64 weights (1/32 of fp16)
    assert 0.25 <= layers_q4 / layers_fp <= 0.25 + 1 / 32 + 0.01, (layers_q4, layers_fp)


def test_cli_generate_nf4_on_bundled_model():
    check_cli_generate("nf4")


def nf4_kernel_sources() -> list[str]:
    """The WGSL of the NF4 GEMV (with and without subgroups), tiled GEMM and split-K GEMM pipelines."""
    from webrwkv.kernels import Kernels, MatMul, Tuning
    from webrwkv.formats import NF4_FORMAT

    dev = device()
    seen: dict[str, None] = {}
    real = dev.pipeline
    dev.pipeline = lambda wgsl, entry="main", constants=None: seen.setdefault(wgsl) or real(wgsl, entry, constants)
    try:
        dev.pipeline_cache.clear()
        for sub in (0, 1):
            k = Kernels(dev, Tuning(gemv_subgroups=sub))
            meta = buf(dev, np.array([37] + [0] * 15, np.uint32))
            for K in (64, 2048):  # K = 2048 splits over K
                blocks, kp = NF4_FORMAT.upload_cpu(dev, np.ones((40, K), np.float32), "w")
                mm = MatMul(k, meta, blocks, kp, 1, 40, dev.buffer(4 * K * 37), dev.buffer(4 * 40 * 37),
                            x_ts=K, y_ts=40, fmt=NF4_FORMAT)
                mm.ops(1), mm.ops(37)
    finally:
        del dev.pipeline
        dev.pipeline_cache.clear()
    return [("enable subgroups;\n" + s) if "subgroup" in s else s for s in seen if "NF4" in s]


def test_nf4_kernels_compile_in_chromium(tmp_path):
    from test_gpu_wgsl_browser import chromium_errors, skip_without_chromium

    skip_without_chromium()
    srcs = nf4_kernel_sources()
    assert len(srcs) >= 5  # GEMV x2 (K), GEMM, split-K GEMM x2 (K slices), GEMV with subgroups if any
    errors = chromium_errors(tmp_path, srcs)
    assert not any(errors), [e for e in errors if e]
