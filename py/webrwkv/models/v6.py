"""RWKV v6, whole: tensor names and shapes, detection, state, the numpy time and channel mix, the GPU recipe.

Data-dependent token shift: d = x'_prev - x', x_x = x' + d mu_x, m_* = W2_* tanh(W1 x_x), x_* = x' + d (mu_* +
m_*); per-token decay w = exp(-exp(time_decay + W_d2 tanh(W_d1 x_w))); then v5's wkv, GroupNorm and gate.
Channel mix: v4's FFN with the mixes written x' + d mu.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .nn import linear, shifted, sigmoid
from .v4 import receptance_ffn
from .v5 import TUNED_STATE, att_core, state_layout, wkv5_op

VERSION = "v6"
KERNEL = "wkv5"  # shaders/wkv5.wgsl with DDLERP=1
__all__ = ["att_core", "state_layout", "TUNED_STATE"]

# -- names and shapes ----------------------------------------------------------------------------
RENAMES = {"time_maa_": "time_mix_", "time_faaaa": "time_first"}
# official [in, out] (time_maa_w2 is [5, D, C]); canonical and converted are [out, in]
ADAPTERS = ("time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2", "time_state")
# stored shapes of vectors that are not [C] in the checkpoint files (canonical: flat [C])
STORED_SHAPES = {**{f"time_maa_{m}": "1,1,C" for m in "xwkvrg"}, "time_decay": "1,1,C", "time_faaaa": "H,S"}


def detect(names: set[str]) -> bool:
    """v6 has the data-dependent token shift (time_maa_x) and decay LoRA."""
    has_x = "blocks.0.att.time_maa_x" in names or "blocks.0.att.time_mix_x" in names
    return has_x and "blocks.0.att.time_decay_w1" in names


def detect_layout(names: set[str], shapes: dict, hint: str, C: int) -> str:
    """The converted layout renames time_maa_* to time_mix_*."""
    return "converted" if "blocks.0.att.time_mix_x" in names else "official"


def sizes(shape: dict[str, tuple], n_embd: int) -> tuple[int, int, dict[str, int]]:
    """(n_head, head_size, adapter dims) from canonical ([out, in]) shapes."""
    H = shape["blocks.0.att.time_faaaa"][0]
    dims = {"time_maa": shape["blocks.0.att.time_maa_w1"][0] // 5,
            "time_decay": shape["blocks.0.att.time_decay_w1"][0]}
    return H, n_embd // H, dims


def layer_shapes(i: int, C: int, H: int, S: int, F: int, dims: dict[str, int]) -> dict[str, tuple]:
    """Canonical shapes of block i."""
    a, f = f"blocks.{i}.att.", f"blocks.{i}.ffn."
    D, Dw = dims["time_maa"], dims["time_decay"]
    vec = ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
           "time_decay", "time_faaaa", "ln_x.weight", "ln_x.bias")
    out = {a + n: (C,) for n in vec}
    out.update({a + "time_maa_w1": (5 * D, C), a + "time_maa_w2": (5, C, D),
                a + "time_decay_w1": (Dw, C), a + "time_decay_w2": (C, Dw)})
    out.update({a + n + ".weight": (C, C) for n in ("key", "value", "receptance", "gate", "output")})
    out.update({f + "time_maa_k": (C,), f + "time_maa_r": (C,)})
    out.update({f + "key.weight": (F, C), f + "value.weight": (C, F), f + "receptance.weight": (C, C)})
    return out


def released_shapes(C: int) -> tuple[int, int, dict[str, int]]:
    """(heads, FFN width, adapter dims) of a released model of width C (bench's random models)."""
    dims = {"time_maa": 32 if C < 4096 else 64, "time_decay": 64 if C < 4096 else 128}
    return C // 64, int(3.5 * C) // 32 * 32, dims


# -- reference (numpy) --------------------------------------------------------------------------------
def time_mix(w: dict, info: Any, i: int, x: np.ndarray, state: dict, v_first: Any) -> tuple[np.ndarray, Any]:
    a, s = f"blocks.{i}.att.", f"blocks.{i}."
    T = len(x)
    dx = shifted(x, state[s + "att_x"]) - x
    xx = x + dx * w[a + "time_maa_x"]
    m = np.tanh(linear(xx, w[a + "time_maa_w1"])).reshape(T, 5, -1)  # [T, 5, D]
    mw, mk, mv, mr, mg = np.einsum("tfd,fcd->ftc", m, w[a + "time_maa_w2"])
    xw = x + dx * (w[a + "time_maa_w"] + mw)
    xk = x + dx * (w[a + "time_maa_k"] + mk)
    xv = x + dx * (w[a + "time_maa_v"] + mv)
    xr = x + dx * (w[a + "time_maa_r"] + mr)
    xg = x + dx * (w[a + "time_maa_g"] + mg)
    r, k, v, g = (linear(z, w[a + n + ".weight"]) for z, n in ((xr, "receptance"), (xk, "key"), (xv, "value"),
                                                            (xg, "gate")))
    d = w[a + "time_decay"] + linear(np.tanh(linear(xw, w[a + "time_decay_w1"])), w[a + "time_decay_w2"])
    y, state[s + "att_kv"] = att_core(r, k, v, g, d, w[a + "time_faaaa"], w[a + "ln_x.weight"], w[a + "ln_x.bias"],
                                      state[s + "att_kv"], info.n_head)
    state[s + "att_x"] = x[-1]
    return linear(y, w[a + "output.weight"]), v_first


def channel_mix(w: dict, info: Any, i: int, x: np.ndarray, state: dict, carry: Any = None) -> np.ndarray:
    f, s = f"blocks.{i}.ffn.", f"blocks.{i}.ffn_x"
    dx = shifted(x, state[s]) - x
    state[s] = x[-1]
    k = np.maximum(linear(x + dx * w[f + "time_maa_k"], w[f + "key.weight"]), 0) ** 2
    r = sigmoid(linear(x + dx * w[f + "time_maa_r"], w[f + "receptance.weight"]))
    return r * linear(k, w[f + "value.weight"])


# -- GPU recipe (webrwkv.layers.LayerBuilder) -----------------------------------------------------------
VECS = ["att.time_maa_x", "att.time_maa_r", "att.time_maa_k", "att.time_maa_v", "att.time_maa_g",
        "att.time_maa_w", "att.time_decay", "att.time_faaaa", "att.ln_x.weight", "att.ln_x.bias",
        "ffn.time_maa_k", "ffn.time_maa_r"]
ORDER = [3, 1, 2, 4, 0]  # official maa order w k v r g -> the kernels' r k v g w


def _pad8(n: int) -> int:
    return -(-n // 8) * 8


def activations(info: Any, rows: int) -> dict[str, int]:
    """[x_x | d | x'] per row (mix), the five LoRA hiddens (h), the five mixes (mix2),
    [r | k | v | g | decay hidden] (proj) and the decay LoRA output (dd)."""
    C, Dp, Dwp = info.n_embd, _pad8(info.dims["time_maa"]), _pad8(info.dims["time_decay"])
    return {"mix": rows * 3 * C, "h": rows * 5 * Dp, "mix2": rows * 5 * C, "proj": rows * (4 * C + Dwp),
            "dd": rows * C}


def att(lb: Any, i: int) -> list:
    """ln1 + [x_x | d | x'] -> LoRA stage 1 (tanh) -> stage 2 with the five mixes fused in ->
    [r | k | v | g | decay hidden] in one dispatch -> decay LoRA stage 2 -> wkv5 -> output."""
    C, b, a, w = lb.C, lb.b, f"blocks.{i}.att.", lb.w
    D, Dw = lb.info.dims["time_maa"], lb.info.dims["time_decay"]
    Dp, Dwp = _pad8(D), _pad8(Dw)
    gens = [lb.ln_mix(i, b["mix"], 1, 3, "ln1", "att.time_maa_x", False, lb.so["att_x"], extra=1)]
    w1 = lb.mat(w[a + "time_maa_w1"]).reshape(5, D, C)
    gens += lb.matmul([w1[j] for j in ORDER], b["mix"], b["h"], a + "maa1", pad_rows=Dp, x_ts=3 * C,
                      y_ts=5 * Dp, acts=("tanh",))
    w2 = lb.mat(w[a + "time_maa_w2"])
    # second LoRA stage with the data-dependent mixes fused in: mix2[t, j] = x' + d * (mu_j + m_j)
    gens += lb.matmul([w2[j] for j in ORDER], b["h"], b["mix2"], a + "maa2", x_ts=5 * Dp, x_gs=Dp, y_ts=5 * C,
                      mode="lerp", gate=b["mix"], g_off=C, g_ts=3 * C, mu=lb.vec_bind(i),
                      mu_off=lb.vo["att.time_maa_r"])
    pts = 4 * C + Dwp  # proj = [r | k | v | g | decay LoRA hidden]
    d1 = lb.mat(w[a + "time_decay_w1"])
    parts = [(w[a + n + ".weight"], j * C, "none") for j, n in enumerate(("receptance", "key", "value", "gate"))]
    gens += lb.fused(parts + [(lb.pad_end(d1, Dwp, d1.shape[1]), 4 * C, "tanh")], b["mix2"], b["proj"], a + "proj",
                     x_ts=5 * C, y_ts=pts)
    gens += lb.matmul([w[a + "time_decay_w2"]], b["proj"], b["dd"], a + "decay2", x_off=4 * C, x_ts=pts, y_ts=C)
    gens.append(wkv5_op(lb, i, 1, pts))
    return gens + lb.matmul([w[a + "output.weight"]], b["y"], b["x"], a + "output", x_ts=C, y_ts=C, mode="add")


def ffn(lb: Any, i: int) -> list:
    return receptance_ffn(lb, i, "ffn.time_maa_k", False)
