"""RWKV v7 DeepEmbed (v7de), whole: v7 whose channel mix scales its hidden layer by a per-token matrix.

Each layer's FFN has a token table s_emb [V, D*D] and s_emb_x [D*D, C] (D = 32 in released models): token t's
D x D matrix is E = s_emb[t] + s_emb_x LN0(emb[t]). With x' the FFN's LayerNorm output, ss = (s1 x') E (a row
vector times E) and the hidden layer relu(W_k x_k)^2 is multiplied by s2 ss + s0 before W_v. The official
package (RWKV_DE_VERSION=1) adds the second term of E into the table at load; here it is computed in each step
from LN0's output, so the file's bytes go to the GPU as they are (the browser streams them). Attention, state
and everything else are v7's, imported from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import GpuError, ModelFormatError
from . import v7
from .nn import linear, shifted
from .v7 import KERNEL, OPTIONAL, RENAMES, STORED_SHAPES, TUNED_STATE, detect_layout, state_layout

VERSION = "v7de"
__all__ = ["KERNEL", "OPTIONAL", "RENAMES", "STORED_SHAPES", "TUNED_STATE", "detect_layout", "state_layout"]

# -- names and shapes ----------------------------------------------------------------------------
# s1 [C, D] and s2 [D, F] are stored [in, out] like v7's LoRA adapters (canonical s1 [D, C], s2 [F, D])
ADAPTERS = v7.ADAPTERS + ("s1", "s2")


def detect(names: set[str]) -> bool:
    """v7's tensors plus the FFN's token table."""
    return v7.detect(names) and "blocks.0.ffn.s_emb.weight" in names


def sizes(shape: dict[str, tuple], n_embd: int) -> tuple[int, int, dict[str, int]]:
    """v7's (heads, head size, LoRA dims) and s: the DeepEmbed matrix size D (s1 is [D, C] canonical)."""
    H, S, dims = v7.sizes(shape, n_embd)
    D = shape["blocks.0.ffn.s1"][0]
    width = shape["blocks.0.ffn.s_emb.weight"][-1]
    if D % 2 or width != D * D:
        raise ModelFormatError(f"the DeepEmbed table rows have {width} values and s1 makes {D} of them; "
                               f"a row must be a {D} x {D} matrix (D even)")
    return H, S, {**dims, "s": D}


def layer_shapes(i: int, C: int, H: int, S: int, F: int, dims: dict[str, int]) -> dict[str, tuple]:
    """Canonical shapes of block i: v7's and the FFN's DeepEmbed tensors (the table is in token_tables)."""
    f, D = f"blocks.{i}.ffn.", dims["s"]
    return {**v7.layer_shapes(i, C, H, S, F, dims), f + "s_emb_x.weight": (D * D, C), f + "s1": (D, C),
            f + "s2": (F, D), f + "s0": (F,)}


def token_tables(n_layer: int, V: int, dims: dict[str, int]) -> dict[str, tuple]:
    """The per-layer tensors with one row per vocabulary entry."""
    return {f"blocks.{i}.ffn.s_emb.weight": (V, dims["s"] ** 2) for i in range(n_layer)}


def released_shapes(C: int) -> tuple[int, int, dict[str, int]]:
    """(heads, FFN width, dims) of a released model of width C: v7's, D = 32."""
    H, F, dims = v7.released_shapes(C)
    return H, F, {**dims, "s": 32}


# -- reference (numpy) --------------------------------------------------------------------------------
@dataclass
class Carry:
    """What the layers hand on: the step's tokens and LN0's output (for the table), v7's v_first."""

    tokens: np.ndarray
    x0: np.ndarray
    v_first: Any = None


def begin(w: dict, info: Any, tokens: np.ndarray, x0: np.ndarray) -> Carry:
    return Carry(tokens, x0)


def time_mix(w: dict, info: Any, i: int, x: np.ndarray, state: dict, carry: Carry) -> tuple[np.ndarray, Carry]:
    y, carry.v_first = v7.time_mix(w, info, i, x, state, carry.v_first)
    return y, carry


def ffn_scale(hid: np.ndarray, ss0: np.ndarray, rows: np.ndarray, demb: np.ndarray, s2: np.ndarray,
              s0: np.ndarray) -> np.ndarray:
    """What shaders/deepembed.wgsl computes: hid [T, F] (relu(W_k x_k)^2) times s2 ss + s0, where ss = ss0 E
    with ss0 [T, D] = s1 x' and E = rows + demb ([T, D*D]: the table rows s_emb[token] and s_emb_x x0)."""
    T, D = ss0.shape
    ss = np.einsum("ta,taj->tj", ss0, (rows + demb).reshape(T, D, D))
    return hid * (linear(ss, s2) + s0)


def channel_mix(w: dict, info: Any, i: int, x: np.ndarray, state: dict, carry: Carry) -> np.ndarray:
    f, s = f"blocks.{i}.ffn.", f"blocks.{i}.ffn_x"
    dx = shifted(x, state[s]) - x
    state[s] = x[-1]
    k = np.maximum(linear(x + dx * w[f + "x_k"], w[f + "key.weight"]), 0) ** 2
    k = ffn_scale(k, linear(x, w[f + "s1"]), np.asarray(w[f + "s_emb.weight"][carry.tokens], np.float32),
                  linear(carry.x0, w[f + "s_emb_x.weight"]), w[f + "s2"], w[f + "s0"])
    return linear(k, w[f + "value.weight"])


# -- GPU recipe (webrwkv.layers.LayerBuilder) -----------------------------------------------------------
VECS = v7.VECS + ["ffn.s0"]  # s0 is [dim_ffn]
# matrices deepembed.wgsl reads itself: fp16 whatever the layers' weight format (--quant leaves them as they are)
FP16_TABLES = ("ffn.s_emb.weight", "ffn.s2")
WG = 64  # hidden rows per deepembed workgroup


def activations(info: Any, rows: int) -> dict[str, int]:
    """v7's, and every layer's s_emb_x x0 (demb, [rows, L * D * D])."""
    return {**v7.activations(info, rows), "demb": rows * info.n_layer * info.dims["s"] ** 2}


def att(lb: Any, i: int) -> list:
    """v7's; before layer 0 (x still holds LN0's output) every layer's s_emb_x x0 in one matmul."""
    if i:
        return v7.att(lb, i)
    L, D = lb.info.n_layer, lb.info.dims["s"]
    emb_x = lb.stack([lb.mat(lb.w[f"blocks.{j}.ffn.s_emb_x.weight"]) for j in range(L)])
    gens = lb.matmul([emb_x], lb.b["x"], lb.b["demb"], "ffn.s_emb_x", x_ts=lb.C, y_ts=L * D * D)
    return gens + v7.att(lb, 0)


def ffn(lb: Any, i: int) -> list:
    """ln2 -> [x_k | d | x'] -> [relu(W_k x_k)^2 | s1 x'] in one dispatch -> the DeepEmbed scale (one
    dispatch per block of the table) -> x += W_v hid."""
    C, F, L, D, b, f = lb.C, lb.info.dim_ffn, lb.info.n_layer, lb.info.dims["s"], lb.b, f"blocks.{i}.ffn."
    hs = F + D  # hidden row: F values, then s1 x'
    gens = [lb.ln_mix(i, b["mix"], 1, 3, "ln2", "ffn.x_k", False, lb.so["ffn_x"], extra=1)]
    gens += lb.fused([(lb.w[f + "key.weight"], 0, "relu2"), (lb.w[f + "s1"], 2 * C, "none")], b["mix"], b["hid"],
                     f + "key", x_ts=3 * C, y_ts=hs)
    s2, s2k = lb.table(lb.w[f + "s2"], f + "s2")
    if len(s2) != 1:
        raise GpuError(f"{f}s2 ({F} x {D}) does not fit one storage binding")
    table, tk = lb.table(lb.w[f + "s_emb.weight"], f + "s_emb")
    for buf, r0, nr in table:
        gens.append(lb.op("deepembed", [b["meta"], buf, s2[0][0], lb.vec_bind(i), b["demb"], b["hid"]],
                          lambda s: (-(-F // WG), s[0], 1), D=D, F=F, HS=hs, WG=WG, V0=r0, NV=nr, ROW=tk // 2,
                          S2ROW=s2k // 2, S0=lb.vo["ffn.s0"], DE_TS=L * D * D, DE_OFF=i * D * D))
    return gens + lb.matmul([lb.w[f + "value.weight"]], b["hid"], b["x"], f + "value", x_ts=hs, y_ts=C, mode="add")
