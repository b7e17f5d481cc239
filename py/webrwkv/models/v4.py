"""RWKV v4, whole: tensor names and shapes, detection, state, the numpy time and channel mix, the GPU recipe.

Time mix: k, v, r from lerp token shifts; a per-channel (aa, bb, pp) exponential-average recurrence with
decay w = -exp(time_decay) and bonus u = time_first; out = W_o (sigmoid(r) * wkv).
Channel mix: sigmoid(W_r x_r) * W_v relu(W_k x_k)^2.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .nn import linear, shifted, sigmoid

VERSION = "v4"
KERNEL = "wkv4"  # shaders/wkv4.wgsl

# -- names and shapes ----------------------------------------------------------------------------
RENAMES: dict[str, str] = {}  # official suffix -> converted suffix (v4 names are the same in both)
ALIASES = {"time_faaaa": "time_first"}  # other stored names for the same tensor -> canonical name
ADAPTERS: tuple[str, ...] = ()  # attributes the official layout stores [in, out] (none in v4)
# stored shapes of vectors that are not [C] in the checkpoint files (canonical: flat [C])
STORED_SHAPES = {"time_mix_k": "1,1,C", "time_mix_v": "1,1,C", "time_mix_r": "1,1,C"}


def detect(names: set[str]) -> bool:
    """v4 has time_first (or time_faaaa) and no gate."""
    has_first = "blocks.0.att.time_first" in names or "blocks.0.att.time_faaaa" in names
    return has_first and "blocks.0.att.gate.weight" not in names


def detect_layout(names: set[str], shapes: dict, hint: str, C: int) -> str:
    """v4 names and shapes are the same in both layouts: the file's metadata hint decides."""
    return hint


def sizes(shape: dict[str, tuple], n_embd: int) -> tuple[int, int, dict[str, int]]:
    """(n_head, head_size, adapter dims): v4 has a single head spanning all channels."""
    return 1, n_embd, {}


def layer_shapes(i: int, C: int, H: int, S: int, F: int, dims: dict[str, int]) -> dict[str, tuple]:
    """Canonical shapes of block i."""
    a, f = f"blocks.{i}.att.", f"blocks.{i}.ffn."
    out = {a + n: (C,) for n in ("time_mix_k", "time_mix_v", "time_mix_r", "time_decay", "time_first")}
    out.update({a + n + ".weight": (C, C) for n in ("key", "value", "receptance", "output")})
    out.update({f + "time_mix_k": (C,), f + "time_mix_r": (C,)})
    out.update({f + "key.weight": (F, C), f + "value.weight": (C, F), f + "receptance.weight": (C, C)})
    return out


def released_shapes(C: int) -> tuple[int, int, dict[str, int]]:
    """(heads, FFN width, adapter dims) of a released model of width C (bench's random models)."""
    return 1, 4 * C, {}


# -- state ------------------------------------------------------------------------------------------
STATE_INIT = {"att_pp": -1e38}  # the running maximum starts below any exponent


def state_layout(n_layer: int, C: int, H: int, S: int) -> list[tuple[str, tuple]]:
    """Per-slot state: previous LN outputs and the (aa, bb, pp) wkv accumulators."""
    out = []
    for i in range(n_layer):
        b = f"blocks.{i}."
        out += [(b + "att_x", (C,)), (b + "att_aa", (C,)), (b + "att_bb", (C,)), (b + "att_pp", (C,)),
                (b + "ffn_x", (C,))]
    return out


# -- reference (numpy) --------------------------------------------------------------------------------
def wkv4(k: np.ndarray, v: np.ndarray, decay: np.ndarray, u: np.ndarray, aa: np.ndarray, bb: np.ndarray,
         pp: np.ndarray) -> tuple[np.ndarray, tuple]:
    """The recurrence over tokens (k, v [T, C]): (wkv [T, C], (aa, bb, pp))."""
    out = np.empty_like(v)
    for t in range(len(k)):
        q = np.maximum(pp, u + k[t])
        e1, e2 = np.exp(pp - q), np.exp(u + k[t] - q)
        out[t] = (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
        q = np.maximum(decay + pp, k[t])
        e1, e2 = np.exp(decay + pp - q), np.exp(k[t] - q)
        aa, bb, pp = e1 * aa + e2 * v[t], e1 * bb + e2, q
    return out, (aa, bb, pp)


def att_core(r: np.ndarray, k: np.ndarray, v: np.ndarray, time_decay: np.ndarray, time_first: np.ndarray,
             aa: np.ndarray, bb: np.ndarray, pp: np.ndarray) -> tuple[np.ndarray, tuple]:
    """What shaders/wkv4.wgsl computes from the projections [T, C]: sigmoid(r) * wkv, and the new state."""
    out, acc = wkv4(k, v, -np.exp(time_decay), time_first, aa, bb, pp)
    return sigmoid(r) * out, acc


def time_mix(w: dict, info: Any, i: int, x: np.ndarray, state: dict, v_first: Any) -> tuple[np.ndarray, Any]:
    a, s = f"blocks.{i}.att.", f"blocks.{i}."
    sx = shifted(x, state[s + "att_x"])
    mix = lambda m: x * w[a + m] + sx * (1 - w[a + m])  # noqa: E731
    k = linear(mix("time_mix_k"), w[a + "key.weight"])
    v = linear(mix("time_mix_v"), w[a + "value.weight"])
    r = linear(mix("time_mix_r"), w[a + "receptance.weight"])
    y, (aa, bb, pp) = att_core(r, k, v, w[a + "time_decay"], w[a + "time_first"],
                               state[s + "att_aa"], state[s + "att_bb"], state[s + "att_pp"])
    state[s + "att_x"], state[s + "att_aa"], state[s + "att_bb"], state[s + "att_pp"] = x[-1], aa, bb, pp
    return linear(y, w[a + "output.weight"]), v_first


def channel_mix(w: dict, info: Any, i: int, x: np.ndarray, state: dict, carry: Any = None) -> np.ndarray:
    """sigmoid(W_r x_r) * W_v relu(W_k x_k)^2 with lerp mixes (v5 uses this FFN too)."""
    f, s = f"blocks.{i}.ffn.", f"blocks.{i}.ffn_x"
    sx = shifted(x, state[s])
    state[s] = x[-1]
    xk = x * w[f + "time_mix_k"] + sx * (1 - w[f + "time_mix_k"])
    xr = x * w[f + "time_mix_r"] + sx * (1 - w[f + "time_mix_r"])
    k = np.maximum(linear(xk, w[f + "key.weight"]), 0) ** 2
    return sigmoid(linear(xr, w[f + "receptance.weight"])) * linear(k, w[f + "value.weight"])


# -- GPU recipe (webrwkv.layers.LayerBuilder) -----------------------------------------------------------
# per-layer vectors, in the order of the layer's vector block (after the LayerNorms)
VECS = ["att.time_mix_r", "att.time_mix_k", "att.time_mix_v", "att.time_decay", "att.time_first",
        "ffn.time_mix_k", "ffn.time_mix_r"]


def activations(info: Any, rows: int) -> dict[str, int]:
    """Float counts of this version's activation buffers: 3 mixes and [r | k | v] per row."""
    return {"mix": rows * 3 * info.n_embd, "proj": rows * 3 * info.n_embd}


def att(lb: Any, i: int) -> list:
    """ln1 + the r, k, v mixes -> [r | k | v] in one matmul -> wkv4 -> output projection (+= x)."""
    C, b, a = lb.C, lb.b, f"blocks.{i}.att."
    gens = [lb.ln_mix(i, b["mix"], 3, 3, "ln1", "att.time_mix_r", True, lb.so["att_x"])]
    gens += lb.matmul([lb.w[a + n + ".weight"] for n in ("receptance", "key", "value")], b["mix"], b["proj"],
                      a + "proj", x_ts=3 * C, x_gs=C, y_ts=3 * C)
    wg = min(64, lb.wg)
    gens.append(lb.op(KERNEL, [b["meta"], b["proj"], lb.vec_bind(i), lb.state_bind(i), b["y"]],
                      lambda s: (C // wg, s[1], 1), C=C, WG=wg, SLOT=lb.slot, AA=lb.so["att_aa"], PTS=3 * C,
                      DECAY=lb.vo["att.time_decay"], FIRST=lb.vo["att.time_first"]))
    return gens + lb.matmul([lb.w[a + "output.weight"]], b["y"], b["x"], a + "output", x_ts=C, y_ts=C, mode="add")


def receptance_ffn(lb: Any, i: int, mu: str, lerp_prev: bool) -> list:
    """ln2 + the k, r mixes (vectors from `mu`) -> [relu(k)^2 | sigmoid(r)] in one dispatch ->
    x += r * W_v k (v4, v5 and v6 share this FFN)."""
    C, F, b, f = lb.C, lb.info.dim_ffn, lb.b, f"blocks.{i}.ffn."
    gens = [lb.ln_mix(i, b["mix"], 2, 2, "ln2", mu, lerp_prev, lb.so["ffn_x"])]
    gens += lb.fused([(lb.w[f + "key.weight"], 0, "relu2"), (lb.w[f + "receptance.weight"], C, "sigmoid")],
                     b["mix"], b["hid"], f + "key+receptance", x_ts=2 * C, y_ts=F + C)
    return gens + lb.matmul([lb.w[f + "value.weight"]], b["hid"], b["x"], f + "value", x_ts=F + C, y_ts=C,
                            mode="gate", gate=b["hid"], g_off=F, g_ts=F + C)


def ffn(lb: Any, i: int) -> list:
    return receptance_ffn(lb, i, "ffn.time_mix_k", True)
