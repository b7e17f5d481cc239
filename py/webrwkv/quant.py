"""Weight quantization: int8 (per-row absmax scales, 4 per u32) and NF4 (4-bit normal-float codes,
8 per u32, one absmax scale per 64 weights)."""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .errors import WebRwkvError
from .kernels import Kernels, row_split


def quantize_int8(w: Any) -> tuple[np.ndarray, np.ndarray]:
    """Quantize along the last axis (one row = one output): q = round(w / s), s = absmax(row) / 127.

    Returns (q int8 of w's shape, scales float32 of shape w.shape[:-1]); an all-zero row gets scale 0.
    """
    w = np.asarray(w, np.float32)
    if w.ndim < 2:
        raise WebRwkvError(f"quantize_int8 needs a matrix, got shape {w.shape}")
    scales = (np.abs(w).max(axis=-1) / np.float32(127)).astype(np.float32)
    inv = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales > 0)
    q = np.clip(np.rint(w * inv[..., None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize_int8(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 weights q * scale (the values the int8 GPU kernels compute with)."""
    return q.astype(np.float32) * np.asarray(scales, np.float32)[..., None]


def upload_int8(dev: Any, w: Any, label: str, pad_k: int = 8) -> tuple[list[tuple], int]:
    """Upload an [N, K] matrix as int8 row blocks that fit the binding limit; K zero-padded to `pad_k`.

    Each block buffer holds its rows' int8 values (K/4 u32 per row, little-endian bytes) followed by
    one f32 scale per row. Returns ([(buffer, first_row, rows)], K_padded) like kernels.upload_matrix.
    """
    q, s = quantize_int8(w)
    N, K = q.shape
    Kp = -(-K // pad_k) * pad_k
    if Kp != K:
        q = np.pad(q, ((0, 0), (0, Kp - K)))
    blocks = []
    for r0, n in row_split(dev, N, Kp + 4):
        data = np.concatenate([np.ascontiguousarray(q[r0:r0 + n]).view(np.uint8).reshape(-1),
                               s[r0:r0 + n].view(np.uint8)])
        buf = dev.buffer(data.nbytes, label=f"{label}[{r0}]")
        dev.write(buf, 0, data)
        blocks.append((buf, r0, n))
    return blocks, Kp


def int8_bytes(rows: int, k: int) -> int:
    """GPU bytes of an int8 matrix: one byte per weight plus one f32 scale per row."""
    return rows * (k + 4)


# NF4: the 16 normal-float levels (quantiles of N(0, 1) scaled to [-1, 1], QLoRA), blocks of 64 along K
NF4_LEVELS = np.array([-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
                       0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0],
                      np.float32)
NF4_BLOCK = 64
NF4_MIDS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2  # float32 decision boundaries between levels


def quantize_nf4(w: Any) -> tuple[np.ndarray, np.ndarray]:
    """Quantize along the last axis in blocks of 64: code = nearest NF4 level of w / absmax(block).

    Returns (codes uint8 0..15 of w's shape, scales float32 of shape w.shape[:-1] + (ceil(K/64),));
    an all-zero block gets scale 0 (and code 7, the level 0.0).
    """
    w = np.asarray(w, np.float32)
    if w.ndim < 2:
        raise WebRwkvError(f"quantize_nf4 needs a matrix, got shape {w.shape}")
    K = w.shape[-1]
    nb = -(-K // NF4_BLOCK)
    wp = np.zeros(w.shape[:-1] + (nb * NF4_BLOCK,), np.float32)
    wp[..., :K] = w
    wb = wp.reshape(w.shape[:-1] + (nb, NF4_BLOCK))
    scales = np.abs(wb).max(axis=-1).astype(np.float32)
    inv = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales > 0)
    x = (wb * inv[..., None]).reshape(wp.shape)[..., :K]
    codes = np.searchsorted(NF4_MIDS, x).astype(np.uint8)
    return codes, scales


def dequantize_nf4(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 weights level[code] * block scale (the values the NF4 GPU kernels compute with)."""
    K = codes.shape[-1]
    s = np.repeat(np.asarray(scales, np.float32), NF4_BLOCK, axis=-1)[..., :K]
    return NF4_LEVELS[codes] * s


def pack_nf4(codes: np.ndarray) -> np.ndarray:
    """[N, K] codes (K % 8 == 0) -> [N, K/8] u32, weight k in bits 4*(k%8) of word k/8."""
    c = codes.astype(np.uint32).reshape(codes.shape[0], -1, 8)
    return (c << (4 * np.arange(8, dtype=np.uint32))).sum(axis=-1, dtype=np.uint32)


def upload_nf4(dev: Any, w: Any, label: str, pad_k: int = 8) -> tuple[list[tuple], int]:
    """Upload an [N, K] matrix as NF4 row blocks that fit the binding limit; K zero-padded to `pad_k`.

    Each block buffer holds its rows' packed codes (K/8 u32 per row) followed by the rows' f32 block
    scales (ceil(K/64) per row, row-major). Returns ([(buffer, first_row, rows)], K_padded).
    """
    w = np.asarray(w, np.float32)
    N, K = w.shape
    Kp = -(-K // pad_k) * pad_k
    if Kp != K:
        w = np.pad(w, ((0, 0), (0, Kp - K)))
    codes, s = quantize_nf4(w)
    packed = pack_nf4(codes)
    blocks = []
    for r0, n in row_split(dev, N, nf4_bytes(1, Kp)):
        data = np.concatenate([packed[r0:r0 + n].reshape(-1).view(np.uint8),
                               np.ascontiguousarray(s[r0:r0 + n]).reshape(-1).view(np.uint8)])
        buf = dev.buffer(data.nbytes, label=f"{label}[{r0}]")
        dev.write(buf, 0, data)
        blocks.append((buf, r0, n))
    return blocks, Kp


def nf4_bytes(rows: int, k: int) -> int:
    """GPU bytes of an NF4 matrix: half a byte per weight plus one f32 scale per 64-weight block."""
    return rows * (k // 2 + 4 * -(-k // NF4_BLOCK))


# -- on the GPU: fp16 rows already in GPU buffers -> the same int8 / NF4 buffers (shaders/quant.wgsl) --
QUANT_WG = 64
PARAM_STRIDE = 256  # uniform binding offsets must be multiples of 256 bytes


def quant_row_bytes(fmt: str, k: int) -> int:
    """GPU bytes of one quantized row of k weights ("int8" or "nf4")."""
    if fmt not in ("int8", "nf4"):
        raise WebRwkvError(f"unknown quantization {fmt!r}; use int8 or nf4")
    return k + 4 if fmt == "int8" else nf4_bytes(1, k)


def alloc_quantized(dev: Any, fmt: str, rows: int, k: int, label: str) -> list[tuple]:
    """Zeroed destination buffers of an [rows, k] quantized matrix, split into row blocks exactly as
    upload_int8 / upload_nf4 split it. Returns [(buffer, first_row, rows)]."""
    rb = quant_row_bytes(fmt, k)
    return [(dev.buffer(n * rb, label=f"{label}[{r0}]"), r0, n) for r0, n in row_split(dev, rows, rb)]


def _pipeline(dev: Any, fmt: str) -> Any:
    return Kernels(dev).get("quant", WG=QUANT_WG, FORMAT=fmt)


def quantize_on_gpu(dev: Any, fmt: str, src: list[tuple], dst: list[tuple], k: int) -> None:
    """Quantize an fp16 matrix on the GPU. `src`: its packed fp16 row blocks [(buffer, first_row, rows)]
    (k halves per row, as kernels.upload_matrix makes them); `dst`: alloc_quantized's blocks. The two
    may split the rows differently: each overlap of a source and a destination block is one dispatch.
    The result equals upload_int8 / upload_nf4 of the same fp16 values, byte for byte."""
    if k % 8:
        raise WebRwkvError(f"quantized rows need a multiple of 8 weights, not {k}")
    jobs = []
    for dbuf, d0, dn in dst:
        for sbuf, s0, sn in src:
            lo, hi = max(d0, s0), min(d0 + dn, s0 + sn)
            if hi > lo:
                jobs.append((sbuf, dbuf, lo - s0, lo - d0, hi - lo, dn))
    if not jobs:
        return
    pipe = _pipeline(dev, fmt)
    maxdim = dev.limits.get("max_workgroups_per_dim", 65535)
    params = np.zeros((len(jobs), PARAM_STRIDE // 4), np.uint32)
    grids = []
    for i, (_, _, s, d, n, dn) in enumerate(jobs):
        wgs = -(-n * (1 if fmt == "int8" else -(-k // NF4_BLOCK)) // QUANT_WG)  # a thread per row / block
        gx = min(wgs, maxdim)
        params[i, :6] = (s, d, n, dn, k, gx)
        grids.append((gx, -(-wgs // gx), 1))
    from .gpu import UNIFORM

    pbuf = dev.buffer(params.nbytes, UNIFORM, "quant params")
    dev.write(pbuf, 0, params)
    ops = [(pipe, dev.bind(pipe, [sbuf, dbuf, (pbuf, i * PARAM_STRIDE, 32)]), grid)
           for i, ((sbuf, dbuf, *_), grid) in enumerate(zip(jobs, grids))]
    dev.encode(ops)
    dev.destroy(pbuf)  # freed once the submitted work is done


def gpu_upload(fmt: str, upload: Callable) -> Callable:
    """upload(dev, w, label) hook: the matrix goes up as fp16 through `upload`, is quantized on the
    GPU, and its fp16 buffers are freed (peak: the quantized model plus one fp16 matrix)."""
    def up(dev: Any, w: Any, label: str) -> tuple[list[tuple], int]:
        src, k = upload(dev, w, label + ".fp16")
        dst = alloc_quantized(dev, fmt, w.shape[0], k, label)
        quantize_on_gpu(dev, fmt, src, dst, k)
        for buf, _, _ in src:
            dev.destroy(buf)
        return dst, k
    return up


def layer_upload(fmt: str, upload: Callable) -> Callable:
    """The upload hook for quantized layer matrices. A hook with a `quant` parameter (a loader whose
    matrix bytes arrive later) is called with quant=fmt and returns blocks in that format itself. Any
    other fp16 upload: quantize on the GPU after it (numpy instead when $WEBRWKV_QUANT_ON=cpu, the
    reference path)."""
    import inspect

    if "quant" in inspect.signature(upload).parameters:
        return lambda dev, w, label: upload(dev, w, label, quant=fmt)
    where = os.environ.get("WEBRWKV_QUANT_ON", "gpu")
    if where not in ("gpu", "cpu"):
        raise WebRwkvError(f"WEBRWKV_QUANT_ON must be gpu or cpu, not {where!r}")
    if where == "cpu":
        return upload_int8 if fmt == "int8" else upload_nf4
    return gpu_upload(fmt, upload)
