"""Weight quantization in numpy, the reference for the GPU formats (webrwkv.formats): int8 (per-row absmax
scales) and NF4 (4-bit normal-float codes, one absmax scale per 64 weights)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import WebRwkvError


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


def wgsl_floats(values: Any) -> list[str]:
    """float32 values as exact WGSL hexadecimal f32 literals (the kernels get tables as template values)."""
    out = []
    for v in np.asarray(values, np.float32).tolist():
        h = float(v).hex()  # e.g. -0x1.b239b00000000p-1
        mant, exp = h.split("p")
        out.append(f"{mant.rstrip('0').rstrip('.')}p{exp}f" if "." in mant else f"{mant}p{exp}f")
    return out
