"""RWKV v7: canonical tensor names and shapes, detection rule, state layout."""

from __future__ import annotations

from .v5 import state_layout  # noqa: F401  (same per-layer state as v5)

VERSION = "v7"

RENAMES: dict[str, str] = {}
# LoRA-style adapters: official [in, out], canonical and converted [out, in]
ADAPTERS = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
# stored shapes of vectors that are not [C] in the checkpoint files (canonical: flat [C])
STORED_SHAPES = {**{n: "1,1,C" for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a")},
                 "r_k": "H,S"}
# layer 0 takes v_first = v, so its value-residual tensors may be absent (and are unused)
OPTIONAL = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def detect(names: set[str]) -> bool:
    """v7 has x_r, w0, a0, k_k, k_a and r_k."""
    return all(f"blocks.0.att.{n}" in names for n in ("x_r", "w0", "a0", "k_k", "k_a", "r_k"))


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
