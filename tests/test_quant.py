"""Int8 weight quantization: numpy round trip bounds, and the int8 GPU runtime against the numpy
reference run on the dequantized weights (GEMM chunks and GEMV tokens), for every version."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_util import VERSIONS, device, fp16_model
from quant_util import (check_chunks, check_cli_generate, check_grouped_matmul, check_row_blocks,
                        check_token_by_token, quant_runtime)

from webrwkv.errors import WebRwkvError
from webrwkv.quant import dequantize_int8, quantize_int8


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


@pytest.mark.parametrize("T,K", [(1, 72), (1, 2056), (37, 72), (37, 2048)])
@pytest.mark.parametrize("subgroups", [0, 1])
def test_int8_grouped_matmul_kernels(T, K, subgroups):
    """GEMV (with unrolled loads and a remainder), tiled GEMM, and GEMM split over K, with three
    groups sharing one int8 buffer, against numpy on the dequantized matrix."""
    check_grouped_matmul("int8", T, K, subgroups)


@pytest.mark.parametrize("T", [1, 9])
def test_int8_row_blocks_past_the_binding_limit(T):
    def check_blocks(blocks, Kp):
        assert len(blocks) == 5 and all(n * (64 + 4) <= 4096 for _, _, n in blocks)

    check_row_blocks("int8", T, 64, check_blocks)


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_chunks_match_dequantized_reference(version):
    check_chunks("int8", version)


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_token_by_token_matches_dequantized_reference(version):
    check_token_by_token("int8", version)


@pytest.mark.parametrize("version", ["v6", "v7"])
def test_int8_weight_bytes_about_half(version):
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    fp = Runtime(device(), info, w, max_batch=1, token_chunk_size=8)
    q8 = quant_runtime("int8", version)
    head = 2 * info.vocab * info.n_embd * 2  # embedding and head stay fp16
    layers_fp, layers_q8 = fp.weight_bytes - head, q8.weight_bytes - head
    assert 0.5 <= layers_q8 / layers_fp <= 0.56, (layers_q8, layers_fp)
    assert q8.weight_bytes < fp.weight_bytes


def test_cli_generate_int8_on_bundled_model():
    check_cli_generate("int8")
