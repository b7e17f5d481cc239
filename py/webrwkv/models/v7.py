"""RWKV v7, whole: tensor names and shapes, detection, state, the numpy time and channel mix, the GPU recipe.

Mixes x_* = x' + (x'_prev - x') mu_*; r, k, v projections; LoRAs for the decay w = exp(-e^-0.5 sigmoid(w0 +
w2 tanh(w1 x_w))), the in-context rate a = sigmoid(a0 + a2 a1 x_a), the gate g = g2 sigmoid(g1 x_g) and (after
layer 0) the value residual; kappa = L2norm(k k_k) per head, k <- k (1 + (a - 1) k_a); per head the delta rule
S_ji <- S_ji w_j + k_j v_i + s_i kappa_j a_j with s_i = -sum_j S_ji kappa_j, y_i = sum_j r_j S_ji; GroupNorm,
+ (sum_j r_j k_j r_k_j) v, times g, then W_o. Channel mix: W_v relu(W_k x_k)^2, no receptance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .nn import GN_EPS, group_norm, linear, shifted, sigmoid
from .v5 import TUNED_STATE, state_layout

VERSION = "v7"
KERNEL = "wkv7"  # shaders/wkv7.wgsl
__all__ = ["state_layout", "TUNED_STATE"]

# -- names and shapes ----------------------------------------------------------------------------
RENAMES: dict[str, str] = {}
# LoRA-style adapters: official [in, out], canonical and converted [out, in]; and v5's time_state
ADAPTERS = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2", "time_state")
# stored shapes of vectors that are not [C] in the checkpoint files (canonical: flat [C])
STORED_SHAPES = {**{n: "1,1,C" for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a")},
                 "r_k": "H,S"}
# layer 0 takes v_first = v, so its value-residual tensors may be absent (and are unused)
OPTIONAL = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def detect(names: set[str]) -> bool:
    """v7 has x_r, w0, a0, k_k, k_a and r_k."""
    return all(f"blocks.0.att.{n}" in names for n in ("x_r", "w0", "a0", "k_k", "k_a", "r_k"))


def detect_layout(names: set[str], shapes: dict, hint: str, C: int) -> str:
    """Names are the same in both layouts; w1 is [C, D] in the official one and [D, C] when converted."""
    rows, cols = shapes["blocks.0.att.w1"][:2]
    if rows == C and cols != C:
        return "official"
    if cols == C and rows != C:
        return "converted"
    return hint


def sizes(shape: dict[str, tuple], n_embd: int) -> tuple[int, int, dict[str, int]]:
    """(n_head, head_size, adapter dims) from canonical ([out, in]) shapes; r_k is [H, S]."""
    H = shape["blocks.0.att.r_k"][0]
    v1 = shape.get("blocks.1.att.v1", shape.get("blocks.0.att.v1", (0,)))
    dims = {n: shape[f"blocks.0.att.{n}1"][0] for n in ("w", "a", "g")}
    dims["v"] = v1[0]
    return H, n_embd // H, dims


def layer_shapes(i: int, C: int, H: int, S: int, F: int, dims: dict[str, int]) -> dict[str, tuple]:
    """Canonical shapes of block i."""
    a, f = f"blocks.{i}.att.", f"blocks.{i}.ffn."
    vec = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a", "r_k",
           "ln_x.weight", "ln_x.bias")
    out = {a + n: (C,) for n in vec}
    for n in ("w", "a", "v", "g"):
        out[a + n + "1"] = (dims[n], C)
        out[a + n + "2"] = (C, dims[n])
    out.update({a + n + ".weight": (C, C) for n in ("key", "value", "receptance", "output")})
    out.update({f + "x_k": (C,), f + "key.weight": (F, C), f + "value.weight": (C, F)})
    return out


def released_shapes(C: int) -> tuple[int, int, dict[str, int]]:
    """(heads, FFN width, adapter dims) of a released model of width C (bench's random models): adapter
    sizes follow the released models' rule of thumb (multiples of 32, growing about as sqrt(C))."""
    r32 = lambda x: max(32, int(round(x / 32)) * 32)  # noqa: E731
    dims = {"w": r32(1.8 * C ** 0.5), "a": r32(1.8 * C ** 0.5), "v": r32(1.3 * C ** 0.5), "g": r32(0.6 * C ** 0.8)}
    return C // 64, 4 * C, dims


# -- reference (numpy) --------------------------------------------------------------------------------
def wkv7(r, w, k, v, kappa, a, S):
    """Delta-rule recurrence, all [T, H, N]; S is [H, N(key j), N(value i)].
    s_i = sum_j S_ji (-kappa_j);  S_ji <- S_ji w_j + k_j v_i + s_i kappa_j a_j;  y_i = sum_j r_j S_ji."""
    out = np.empty_like(v)
    for t in range(len(r)):
        sa = np.einsum("hji,hj->hi", S, -kappa[t])
        S = (S * w[t][:, :, None] + k[t][:, :, None] * v[t][:, None, :]
             + (kappa[t] * a[t])[:, :, None] * sa[:, None, :])
        out[t] = np.einsum("hj,hji->hi", r[t], S)
    return out, S


def att_core(r: np.ndarray, w_l: np.ndarray, k: np.ndarray, v: np.ndarray, a_l: np.ndarray, g: np.ndarray,
             v_l: np.ndarray | None, v_first: np.ndarray | None, vec: dict, S: np.ndarray,
             H: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What shaders/wkv7.wgsl computes from the projections r, k, v and the LoRA outputs (w_l, a_l before
    their sigmoid, the gate g, v_l; all [T, C]; v_l is None in layer 0, which sets v_first): decay,
    in-context rate, kappa, value residual, the delta rule, GroupNorm, the r.k bonus and the gate.
    vec holds w0 a0 v0 k_k k_a r_k ln_w ln_b. Returns (y, new state, v_first)."""
    T, C = r.shape
    N = C // H
    hv = lambda z: z.reshape(T, H, N)  # noqa: E731
    decay = np.exp(-math.exp(-0.5) * sigmoid(vec["w0"] + w_l))
    a = sigmoid(vec["a0"] + a_l)
    kk = hv(k * vec["k_k"])
    kk = kk / np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)
    k = k * (1 + (a - 1) * vec["k_a"])
    if v_l is None:
        v_first = v
    else:
        v = v + (v_first - v) * sigmoid(vec["v0"] + v_l)
    y, S = wkv7(hv(r), hv(decay), hv(k), hv(v), kk, hv(a), S)
    y = group_norm(y.reshape(T, C), H, vec["ln_w"], vec["ln_b"])
    bonus = (hv(r) * hv(k) * vec["r_k"].reshape(H, N)).sum(-1, keepdims=True) * hv(v)
    return (y + bonus.reshape(T, C)) * g, S, v_first


def time_mix(w: dict, info: Any, i: int, x: np.ndarray, state: dict, v_first: Any) -> tuple[np.ndarray, Any]:
    p, s = f"blocks.{i}.att.", f"blocks.{i}."
    dx = shifted(x, state[s + "att_x"]) - x
    xr, xw, xk, xv, xa, xg = (x + dx * w[p + "x_" + m] for m in "rwkvag")
    lora = lambda z, n: linear(z, w[p + n + "1"])  # noqa: E731
    r = linear(xr, w[p + "receptance.weight"])
    k = linear(xk, w[p + "key.weight"])
    v = linear(xv, w[p + "value.weight"])
    w_l = linear(np.tanh(lora(xw, "w")), w[p + "w2"])
    a_l = linear(lora(xa, "a"), w[p + "a2"])
    g = linear(sigmoid(lora(xg, "g")), w[p + "g2"])
    v_l = None if i == 0 else linear(lora(xv, "v"), w[p + "v2"])
    vec = {n: w.get(p + n) for n in ("w0", "a0", "v0", "k_k", "k_a", "r_k")}
    vec.update(ln_w=w[p + "ln_x.weight"], ln_b=w[p + "ln_x.bias"])
    y, state[s + "att_kv"], v_first = att_core(r, w_l, k, v, a_l, g, v_l, v_first, vec, state[s + "att_kv"],
                                               info.n_head)
    state[s + "att_x"] = x[-1]
    return linear(y, w[p + "output.weight"]), v_first


def channel_mix(w: dict, info: Any, i: int, x: np.ndarray, state: dict, carry: Any = None) -> np.ndarray:
    f, s = f"blocks.{i}.ffn.", f"blocks.{i}.ffn_x"
    dx = shifted(x, state[s]) - x
    state[s] = x[-1]
    k = np.maximum(linear(x + dx * w[f + "x_k"], w[f + "key.weight"]), 0) ** 2
    return linear(k, w[f + "value.weight"])


# -- GPU recipe (webrwkv.layers.LayerBuilder) -----------------------------------------------------------
VECS = ["att.x_w", "att.x_a", "att.x_g", "att.x_v", "att.x_r", "att.x_k", "att.w0", "att.a0", "att.v0",
        "att.k_k", "att.k_a", "att.r_k", "att.ln_x.weight", "att.ln_x.bias", "ffn.x_k"]
LORA_ACTS = {"w": "tanh", "a": "none", "g": "sigmoid", "v": "none"}  # activation after each LoRA's first stage


def activations(info: Any, rows: int) -> dict[str, int]:
    """6 mixes (w a g v r k), [v | r | k | LoRA hiddens] (proj), the LoRA outputs (l2) and layer 0's v."""
    C, dp = info.n_embd, -(-max(info.dims.values()) // 8) * 8
    return {"mix": rows * 6 * C, "proj": rows * (3 * C + 4 * dp), "l2": rows * 4 * C, "vfirst": rows * C}


def att(lb: Any, i: int) -> list:
    """ln1 + six mixes -> [v | r | k | LoRA hiddens w a g (v)] in one dispatch -> the LoRAs' second stages in
    one matmul -> wkv7 (decay, a, kappa, value residual, delta rule, GroupNorm, bonus, gate) -> output."""
    C, b, a, w = lb.C, lb.b, f"blocks.{i}.att.", lb.w
    gens = [lb.ln_mix(i, b["mix"], 6, 6, "ln1", "att.x_w", False, lb.so["att_x"])]
    names = "wag" if i == 0 else "wagv"
    dp = lb.lora_dim()
    pts = 3 * C + len(names) * dp
    parts = [(w[a + n + ".weight"], (3 + j) * C, "none") for j, n in enumerate(("value", "receptance", "key"))]
    parts += [(lb.pad_end(lb.mat(w[a + n + "1"]), dp, C), j * C, LORA_ACTS[n]) for j, n in enumerate(names)]
    gens += lb.fused(parts, b["mix"], b["proj"], a + "proj", x_ts=6 * C, y_ts=pts)
    gens += lb.matmul([lb.pad_end(lb.mat(w[a + n + "2"]), C, dp) for n in names], b["proj"], b["l2"], a + "lora2",
                      x_off=3 * C, x_ts=pts, x_gs=dp, y_ts=len(names) * C)
    gens.append(lb.op(KERNEL, [b["meta"], b["proj"], b["l2"], lb.vec_bind(i), lb.state_bind(i), b["vfirst"], b["y"]],
                      lambda s: (lb.info.n_head, s[1], 1), C=C, WG=lb.info.head_size, HS=lb.info.head_size,
                      NL=len(names), SLOT=lb.slot, PTS=pts, KV=lb.so["att_kv"], W0=lb.vo["att.w0"],
                      A0=lb.vo["att.a0"], V0=lb.vo["att.v0"], KK=lb.vo["att.k_k"], KA=lb.vo["att.k_a"],
                      RK=lb.vo["att.r_k"], LAYER0=int(i == 0), LNXW=lb.vo["att.ln_x.weight"],
                      LNXB=lb.vo["att.ln_x.bias"], EPS=GN_EPS))
    return gens + lb.matmul([w[a + "output.weight"]], b["y"], b["x"], a + "output", x_ts=C, y_ts=C, mode="add")


def ffn(lb: Any, i: int) -> list:
    """ln2 + one mix -> relu(W_k x_k)^2 -> x += W_v hid."""
    C, F, b, f = lb.C, lb.info.dim_ffn, lb.b, f"blocks.{i}.ffn."
    gens = [lb.ln_mix(i, b["mix"], 1, 1, "ln2", "ffn.x_k", False, lb.so["ffn_x"])]
    gens += lb.matmul([lb.w[f + "key.weight"]], b["mix"], b["hid"], f + "key", x_ts=C, y_ts=F, acts=("relu2",))
    return gens + lb.matmul([lb.w[f + "value.weight"]], b["hid"], b["x"], f + "value", x_ts=F, y_ts=C, mode="add")
