"""Int8 weight quantization: per-output-row absmax scales, int8 values packed 4 per u32 for the GPU."""

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
    limit = min(dev.limits["max_storage_binding"], dev.limits["max_buffer_size"])
    per = max(1, limit // (Kp + 4))
    if per < N and per >= 64:
        per -= per % 64
    blocks = []
    for r0 in range(0, N, per):
        n = min(per, N - r0)
        data = np.concatenate([np.ascontiguousarray(q[r0:r0 + n]).view(np.uint8).reshape(-1),
                               s[r0:r0 + n].view(np.uint8)])
        buf = dev.buffer(data.nbytes, label=f"{label}[{r0}]")
        dev.write(buf, 0, data)
        blocks.append((buf, r0, n))
    return blocks, Kp


def int8_bytes(rows: int, k: int) -> int:
    """GPU bytes of an int8 matrix: one byte per weight plus one f32 scale per row."""
    return rows * (k + 4)
