"""Numpy building blocks of the reference forward passes (float32): layer and group norm, sigmoid,
token shift and the [out, in] linear map. The version files compose them."""

from __future__ import annotations

import numpy as np

LN_EPS = 1e-5    # every LayerNorm of every version
GN_EPS = 64e-5   # the per-head GroupNorm (ln_x) of v5-v7: 1e-5 * head_size_divisor (8) ** 2


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = LN_EPS) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def group_norm(x: np.ndarray, n_head: int, w: np.ndarray, b: np.ndarray, eps: float = GN_EPS) -> np.ndarray:
    """GroupNorm of [T, C] over n_head groups (one per head)."""
    T, C = x.shape
    return layer_norm(x.reshape(T, n_head, C // n_head), 1.0, 0.0, eps).reshape(T, C) * w + b


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def shifted(x: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The previous token's LN output for every position: [prev, x[0], ..., x[T-2]]."""
    return np.concatenate([prev[None], x[:-1]], axis=0)


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x @ w.T  # w is [out, in]
