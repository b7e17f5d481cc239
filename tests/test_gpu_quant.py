"""Quantization on the GPU (shaders/quant.wgsl): the int8 / NF4 buffers it writes from fp16 rows equal,
byte for byte, those of the numpy quantizers (WeightFormat.upload_cpu, webrwkv.quant), and a runtime
loaded with the GPU path computes exactly what one loaded with the numpy path does."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_util import GOLDEN, device, drain, fp16_model

from webrwkv import quant
from webrwkv.formats import FP16, weight_format

FORMATS = ["int8", "nf4"]


def gpu_blocks(dev, fmt: str, w: np.ndarray) -> tuple[list, int]:
    return weight_format(fmt).upload(dev, w, "w")


def assert_same_buffers(dev, fmt: str, w: np.ndarray) -> int:
    """GPU-quantized blocks == numpy-quantized blocks (same split, same bytes); returns the block count."""
    want, kw = weight_format(fmt).upload_cpu(dev, w, "want")
    got, kg = gpu_blocks(dev, fmt, w)
    assert kg == kw and [(r0, n) for _, r0, n in got] == [(r0, n) for _, r0, n in want]
    for (a, r0, n), (b, _, _) in zip(want, got):
        assert b.size == a.size == n * weight_format(fmt).row_bytes(kw)
        ra = np.frombuffer(dev.read(a, 0, a.size), np.uint8)
        rb = np.frombuffer(dev.read(b, 0, b.size), np.uint8)
        bad = np.flatnonzero(ra != rb)
        assert bad.size == 0, f"{fmt} rows {r0}+{n}: {bad.size} bytes differ, first at {bad[:5]}"
    return len(got)


def wide_matrix(rng, n: int, k: int) -> np.ndarray:
    """fp16 rows whose magnitudes span the fp16 range (subnormals to ~6e4), with zero rows/blocks."""
    w = rng.standard_normal((n, k)) * 10.0 ** rng.uniform(-7, 4, (n, 1))
    w = np.clip(w, -65504, 65504).astype(np.float16)
    w[1] = 0                       # an all-zero row: scale 0
    w[2, :64] = 0                  # an all-zero 64-block (NF4 scale 0, code 7)
    w[4, 5] = np.float16(-65504)   # the largest fp16 magnitude
    return w


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n,k", [(37, 100), (70, 72), (9, 2048), (5, 8), (130, 200)])
def test_gpu_quantization_equals_numpy(fmt, n, k):
    """Random matrices, odd K (padded to a multiple of 8, NF4's last block partial), zero rows/blocks."""
    dev = device()
    rng = np.random.default_rng(n * 1000 + k)
    assert_same_buffers(dev, fmt, (rng.standard_normal((n, k)) * 0.05).astype(np.float16))
    assert_same_buffers(dev, fmt, wide_matrix(rng, max(n, 6), k))


def near_boundaries(fmt: str) -> list[tuple[float, float]]:
    """(absmax, w) fp16 pairs whose scaled value x = w * (1 / scale) lies on or next to a rounding
    boundary. int8: within 3 f32 ulps of an x.5 step (thousands exactly on it: ties go to even).
    NF4: for every level midpoint, the reachable x closest to it from each side (x depends only on the
    two fp16 significands, so this covers every fp16 input). A 1-ulp error in 1/scale, a midpoint that
    misorders any reachable x, or another tie rule changes some of these codes."""
    a = np.arange(0x0400, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)  # normal halves
    if fmt == "int8":
        s = a / np.float32(127)
        inv, edges = np.float32(1) / s, (np.arange(127, dtype=np.float32) + np.float32(0.5))[None, :] * s[:, None]
    else:
        inv, edges = np.float32(1) / a, quant.NF4_MIDS[None, :] * a[:, None]
    h = edges.astype(np.float16)[..., None]
    w = np.concatenate([np.nextafter(h, np.float16(-np.inf)), h, np.nextafter(h, np.float16(np.inf))], -1)
    x = w.astype(np.float32) * inv[:, None, None]
    edge = np.floor(x) + np.float32(0.5) if fmt == "int8" else np.broadcast_to(quant.NF4_MIDS[None, :, None], x.shape)
    d = (x - edge) / np.abs(np.spacing(edge))  # signed distance in ulps
    ok = w.astype(np.float32) <= a[:, None, None]
    if fmt == "int8":
        near = ok & (np.abs(d) <= 3)
    else:
        near = np.zeros_like(ok)
        for j in range(15):
            dj, okj = d[:, j], ok[:, j]
            lo = dj[okj & (dj <= 0)].max()
            hi = dj[okj & (dj > 0)].min()
            near[:, j] = okj & ((dj == lo) | (dj == hi))
    i, _, _ = np.nonzero(near)
    return list(zip(a[i].tolist(), w[near].astype(np.float32).tolist()))


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpu_quantization_at_rounding_boundaries(fmt):
    dev = device()
    pairs = near_boundaries(fmt)
    assert len(pairs) > 100
    rng = np.random.default_rng(3)
    pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), min(len(pairs), 2048), replace=False))]
    # each pair is one 64-weight block: [absmax, w, -w, 0 ...]; 8 blocks a row
    blocks = np.zeros((len(pairs) + (-len(pairs)) % 8, 64), np.float32)
    for j, (a, w) in enumerate(pairs):
        blocks[j, :3] = a, w, -w
    if fmt == "int8":  # int8 scales per row: one pair per row of 64
        w = blocks.astype(np.float16)
        q, _ = quant.quantize_int8(np.float32([[127, -126.5, -125.5, -124.5]]))
        assert q[0, 1:].tolist() == [-126, -126, -124]  # ties round half to even
    else:
        w = blocks.reshape(-1, 512).astype(np.float16)
    assert_same_buffers(dev, fmt, w)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpu_quantization_row_blocks_at_a_small_binding_limit(fmt):
    """A 4096-byte binding limit splits the fp16 rows (72 per block) and the quantized rows (60 or
    64 per block) differently: one dispatch per overlap still writes the numpy blocks."""
    from webrwkv.gpu import open_device

    device()
    dev = open_device("native", max_binding_override=4096)
    rng = np.random.default_rng(7)
    w = wide_matrix(rng, 300, 24)
    src, _ = FP16.upload(dev, w, "fp16")
    assert len(src) > 1
    assert assert_same_buffers(dev, fmt, w) > 1
    w = (rng.standard_normal((200, 56)) * 0.02).astype(np.float16)
    assert assert_same_buffers(dev, fmt, w) > 1


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("version", ["v5", "v7"])
def test_runtime_gpu_quantized_equals_numpy_quantized(fmt, version, monkeypatch):
    """The whole model: a runtime quantized on the GPU gives the same logits, bit for bit, as one
    quantized in numpy (WEBRWKV_QUANT_ON=cpu)."""
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    toks = np.random.default_rng(1).integers(0, 256, 12).tolist()
    out = {}
    for where in ("cpu", "gpu"):
        monkeypatch.setenv("WEBRWKV_QUANT_ON", where)
        rt = Runtime(device(), info, w, max_batch=1, token_chunk_size=8, quant=fmt)
        rt.push(0, toks)
        out[where] = drain(rt, 0, all_logits=True)
    assert np.array_equal(out["cpu"], out["gpu"])


def stream_quantized(path, dev, fmt: str):
    """web/loader.js's part of a streamed load with quant=fmt (writes in file order, staging buffers for
    tensors that need a conversion); returns the load and the most matrices alive in fp16 at once."""
    from webrwkv.browser_loader import StreamingLoad

    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    ld = StreamingLoad(dev, data[: 8 + n], len(data), path.as_uri(), None, quant=fmt)
    most = 0
    for a0, a1, buf, off, tag in sorted(ld.writes, key=lambda w: w[0]):
        staged = buf is None
        if staged:
            buf = dev.buffer(a1 - a0, label="staging")
        chunk = data[a0:a1]
        dev.write(buf, off, chunk + b"\0" * (a1 - a0 - len(chunk)))
        ld.write_done(tag, buf if staged else None)
        most = max(most, sum(any(b is not None for b in j.src) for j in ld.jobs))
    return ld, most


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["v7", "v6-bf16", "v5-converted", "v4"])
def test_streamed_load_quantizes_like_native(fmt, name):
    """The browser's streamed load with quant: every layer matrix is quantized on the GPU once its rows
    have arrived, only a few matrices exist in fp16 at a time, and the logits equal, bit for bit,
    the native runtime's with the same quant (fp32 / bf16 files go through the fp16 conversion first)."""
    import asyncio

    from webrwkv.models import load_weights
    from webrwkv.runtime import Runtime

    dev = device()
    path = GOLDEN / f"{name}.st"
    ld, most = stream_quantized(path, dev, fmt)
    rt, _, info = asyncio.run(ld.finish())
    assert ld.jobs and all(j.done and j.src == [None] * len(j.split) for j in ld.jobs)
    assert most <= 3 < len(ld.jobs), (most, len(ld.jobs))
    _, w = load_weights(path)
    native = Runtime(dev, info, w, tuning=rt.k.tuning, quant=fmt)
    assert native.weight_bytes == rt.weight_bytes
    ids = [0, 17, 255, 3, 1000 % info.vocab, 42]
    rt.push(0, ids)
    native.push(0, ids)
    np.testing.assert_array_equal(rt.run(all_logits=True)[0], native.run(all_logits=True)[0])
