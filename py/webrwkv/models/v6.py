"""RWKV v6: canonical tensor names and shapes, detection rule, state layout."""

from __future__ import annotations

from .v5 import state_layout  # noqa: F401  (same per-layer state as v5)

VERSION = "v6"

RENAMES = {"time_maa_": "time_mix_", "time_faaaa": "time_first"}
# official [in, out] (time_maa_w2 is [5, D, C]); canonical and converted are [out, in]
ADAPTERS = ("time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2")
# stored shapes of vectors that are not [C] in the checkpoint files (canonical: flat [C])
STORED_SHAPES = {**{f"time_maa_{m}": "1,1,C" for m in "xwkvrg"}, "time_decay": "1,1,C", "time_faaaa": "H,S"}


def detect(names: set[str]) -> bool:
    """v6 has the data-dependent token shift (time_maa_x) and decay LoRA."""
    has_x = "blocks.0.att.time_maa_x" in names or "blocks.0.att.time_mix_x" in names
    return has_x and "blocks.0.att.time_decay_w1" in names


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
