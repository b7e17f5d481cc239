"""RWKV v5.2, whole: tensor names and shapes, detection, state, the numpy time mix, the GPU recipe.

Time mix: r, k, v, g from lerp token shifts; per head (size S) a matrix state S[j, i] (j key, i value):
y_i = sum_j r_j (u_j k_j v_i + S_ji), S_ji <- w_j S_ji + k_j v_i with w = exp(-exp(time_decay)),
u = time_faaaa; GroupNorm per head (ln_x), times silu(g), then W_o. Channel mix: v4's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelFormatError
from .nn import GN_EPS, group_norm, linear, shifted, sigmoid
from .v4 import channel_mix, receptance_ffn

VERSION = "v5"
KERNEL = "wkv5"  # shaders/wkv5.wgsl (v6 shares it)
__all__ = ["channel_mix"]

# -- names and shapes ----------------------------------------------------------------------------
RENAMES = {"time_faaaa": "time_first"}
# the official layout swaps the last two axes of these (time_state: see TUNED_STATE)
ADAPTERS: tuple[str, ...] = ("time_state",)
# stored shapes of vectors that are not [C] in the checkpoint files (canonical: flat [C])
STORED_SHAPES = {"time_mix_k": "1,1,C", "time_mix_v": "1,1,C", "time_mix_r": "1,1,C", "time_mix_g": "1,1,C",
                 "time_decay": "H,S", "time_faaaa": "H,S"}


def detect(names: set[str]) -> bool:
    """v5 has a gate and a GroupNorm (ln_x)."""
    return "blocks.0.att.gate.weight" in names and "blocks.0.att.ln_x.weight" in names


def detect_layout(names: set[str], shapes: dict, hint: str, C: int) -> str:
    """The converted layout renames time_faaaa to time_first."""
    return "converted" if "blocks.0.att.time_first" in names else "official"


def sizes(shape: dict[str, tuple], n_embd: int) -> tuple[int, int, dict[str, int]]:
    """(n_head, head_size, adapter dims); the head count is time_faaaa's first dimension."""
    H = shape["blocks.0.att.time_faaaa"][0]
    if int(np.prod(shape.get("blocks.0.att.time_decay", (n_embd,)))) != n_embd:
        raise ModelFormatError("this is RWKV v5.0/5.1 (per-head decay); only v5.2 is supported")
    return H, n_embd // H, {}


def layer_shapes(i: int, C: int, H: int, S: int, F: int, dims: dict[str, int]) -> dict[str, tuple]:
    """Canonical shapes of block i."""
    a, f = f"blocks.{i}.att.", f"blocks.{i}.ffn."
    vec = ("time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g", "time_decay", "time_faaaa",
           "ln_x.weight", "ln_x.bias")
    out = {a + n: (C,) for n in vec}
    out.update({a + n + ".weight": (C, C) for n in ("key", "value", "receptance", "gate", "output")})
    out.update({f + "time_mix_k": (C,), f + "time_mix_r": (C,)})
    out.update({f + "key.weight": (F, C), f + "value.weight": (C, F), f + "receptance.weight": (C, C)})
    return out


def released_shapes(C: int) -> tuple[int, int, dict[str, int]]:
    """(heads, FFN width, adapter dims) of a released model of width C (bench's random models)."""
    return C // 64, 4 * C, {}


# -- state ------------------------------------------------------------------------------------------
def state_layout(n_layer: int, C: int, H: int, S: int) -> list[tuple[str, tuple]]:
    """Per-slot state: previous LN outputs and the per-head kv matrix [h, key, value]."""
    out = []
    for i in range(n_layer):
        b = f"blocks.{i}."
        out += [(b + "att_x", (C,)), (b + "att_kv", (H, S, S)), (b + "ffn_x", (C,))]
    return out


# A state-tuned checkpoint (or a state file) holds each layer's initial kv matrix as att.time_state, stored
# [H, S(value i), S(key j)]: the official package transposes it into its [h, key, value] state, so it is listed
# in ADAPTERS and arrives canonical as att_kv. v6 and v7 share this (their state-tuning files lie the same way).
TUNED_STATE = {"att.time_state": "att_kv"}


# -- reference (numpy) --------------------------------------------------------------------------------
def wkv5(r, k, v, decay, u, S):
    """Per-head linear attention with decay: r, k, v [T, H, N]; decay [H, N] or [T, H, N]; S [H, N(key), N(value)]."""
    out = np.empty_like(v)
    for t in range(len(r)):
        kv = k[t][:, :, None] * v[t][:, None, :]
        out[t] = np.einsum("hj,hji->hi", r[t], u[:, :, None] * kv + S)
        d = decay[t] if decay.ndim == 3 else decay
        S = kv + d[:, :, None] * S
    return out, S


def att_core(r: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, decay: np.ndarray, u: np.ndarray,
             ln_w: np.ndarray, ln_b: np.ndarray, S: np.ndarray, H: int) -> tuple[np.ndarray, np.ndarray]:
    """What shaders/wkv5.wgsl computes from the projections [T, C]: GroupNorm(wkv) * silu(g), and the new
    state. `decay` is time_decay ([C]; v6: [T, C] with the decay LoRA added), w = exp(-exp(decay))."""
    T, C = r.shape
    N = C // H
    hv = lambda z: z.reshape(T, H, N)  # noqa: E731
    w = np.exp(-np.exp(decay))
    w = hv(w) if w.ndim == 2 else w.reshape(H, N)
    y, S = wkv5(hv(r), hv(k), hv(v), w, u.reshape(H, N), S)
    return group_norm(y.reshape(T, C), H, ln_w, ln_b) * (g * sigmoid(g)), S


def time_mix(w: dict, info: Any, i: int, x: np.ndarray, state: dict, v_first: Any) -> tuple[np.ndarray, Any]:
    a, s = f"blocks.{i}.att.", f"blocks.{i}."
    sx = shifted(x, state[s + "att_x"])
    mix = lambda m: x * w[a + m] + sx * (1 - w[a + m])  # noqa: E731
    r, k, v, g = (linear(mix("time_mix_" + m), w[a + n + ".weight"])
                  for m, n in (("r", "receptance"), ("k", "key"), ("v", "value"), ("g", "gate")))
    y, state[s + "att_kv"] = att_core(r, k, v, g, w[a + "time_decay"], w[a + "time_faaaa"], w[a + "ln_x.weight"],
                                      w[a + "ln_x.bias"], state[s + "att_kv"], info.n_head)
    state[s + "att_x"] = x[-1]
    return linear(y, w[a + "output.weight"]), v_first


# -- GPU recipe (webrwkv.layers.LayerBuilder) -----------------------------------------------------------
VECS = ["att.time_mix_r", "att.time_mix_k", "att.time_mix_v", "att.time_mix_g", "att.time_decay",
        "att.time_faaaa", "att.ln_x.weight", "att.ln_x.bias", "ffn.time_mix_k", "ffn.time_mix_r"]


def activations(info: Any, rows: int) -> dict[str, int]:
    """4 mixes and [r | k | v | g] per row."""
    return {"mix": rows * 4 * info.n_embd, "proj": rows * 4 * info.n_embd, "dd": 4}


def wkv5_op(lb: Any, i: int, ddlerp: int, pts: int) -> Any:
    """The wkv5 kernel of layer i over proj = [r | k | v | g | ...] rows of `pts` floats; with ddlerp
    (v6) the per-token decay adds dd[t]."""
    info, b = lb.info, lb.b
    return lb.op(KERNEL, [b["meta"], b["proj"], b["dd"], lb.vec_bind(i), lb.state_bind(i), b["y"]],
                 lambda s: (info.n_head, s[1], 1), C=lb.C, WG=info.head_size, HS=info.head_size, SLOT=lb.slot,
                 KV=lb.so["att_kv"], PTS=pts, FIRST=lb.vo["att.time_faaaa"], DECAY=lb.vo["att.time_decay"],
                 DDLERP=ddlerp, LNXW=lb.vo["att.ln_x.weight"], LNXB=lb.vo["att.ln_x.bias"], EPS=GN_EPS)


def att(lb: Any, i: int) -> list:
    """ln1 + the r, k, v, g mixes -> [r | k | v | g] in one matmul -> wkv5 (+ GroupNorm, gate) -> output."""
    C, b, a = lb.C, lb.b, f"blocks.{i}.att."
    gens = [lb.ln_mix(i, b["mix"], 4, 4, "ln1", "att.time_mix_r", True, lb.so["att_x"])]
    gens += lb.matmul([lb.w[a + n + ".weight"] for n in ("receptance", "key", "value", "gate")], b["mix"],
                      b["proj"], a + "proj", x_ts=4 * C, x_gs=C, y_ts=4 * C)
    gens.append(wkv5_op(lb, i, 0, 4 * C))
    return gens + lb.matmul([lb.w[a + "output.weight"]], b["y"], b["x"], a + "output", x_ts=C, y_ts=C, mode="add")


def ffn(lb: Any, i: int) -> list:
    return receptance_ffn(lb, i, "ffn.time_mix_k", True)
