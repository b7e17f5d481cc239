"""Shared helpers for the GPU tests: the device (or a skip), fp16-exact golden weights, rel. L2."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden"
from webrwkv.models import VERSIONS as _REGISTRY

VERSIONS = sorted(_REGISTRY)  # every version of the registry


def skip_or_fail(why: str) -> None:
    """Skip a test whose requirement is missing; under CI=true (where setup installs everything) fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: the project's setup should have provided it)")
    pytest.skip(why)


@functools.lru_cache(maxsize=None)
def open_shared_device():
    from webrwkv.gpu import open_device

    return open_device("native")


def device():
    """The shared native device, or skip the test when no Vulkan/Metal/D3D12 adapter exists (fail on CI)."""
    try:
        return open_shared_device()
    except Exception as e:  # noqa: BLE001 - any failure to reach a GPU
        skip_or_fail(f"no usable GPU adapter for the native backend ({e}); install mesa-vulkan-drivers")


@functools.lru_cache(maxsize=None)
def fp16_model(version: str):
    """(info, weights) of the golden model with every weight rounded to fp16 (what the GPU stores)."""
    from webrwkv.models import load_weights

    info, w = load_weights(GOLDEN / f"{version}.st")
    return info, {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def state_rel(s1: dict, s2: dict) -> float:
    assert s1.keys() == s2.keys()
    return max(rel(s1[k], s2[k]) for k in s1 if np.linalg.norm(s2[k]) > 0)


def one_by_one(rt, toks, slot: int = 0) -> np.ndarray:
    """Logits of each token of `toks` run one token per step on `slot`, from a fresh state."""
    rt.reset(slot)
    got = []
    for t in toks:
        rt.push(slot, [t])
        got.append(drain(rt, slot))
    return np.stack(got)


def drain(rt, slot: int = 0, all_logits: bool = False):
    """Run until `slot` returns its logits."""
    out = {}
    while slot not in out:
        out.update(rt.run(all_logits=all_logits))
    return out[slot]
