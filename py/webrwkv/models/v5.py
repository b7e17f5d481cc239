"""RWKV v5.2: canonical tensor names and shapes, detection rule, state layout."""

from __future__ import annotations

VERSION = "v5"

RENAMES = {"time_faaaa": "time_first"}
ADAPTERS: tuple[str, ...] = ()
# stored shapes of vectors that are not [C] in the checkpoint files (canonical: flat [C])
STORED_SHAPES = {"time_mix_k": "1,1,C", "time_mix_v": "1,1,C", "time_mix_r": "1,1,C", "time_mix_g": "1,1,C",
                 "time_decay": "H,S", "time_faaaa": "H,S"}


def detect(names: set[str]) -> bool:
    """v5 has a gate and a GroupNorm (ln_x)."""
    return "blocks.0.att.gate.weight" in names and "blocks.0.att.ln_x.weight" in names


def sizes(shape: dict[str, tuple], n_embd: int) -> tuple[int, int, dict[str, int]]:
    """(n_head, head_size, adapter dims); the head count is time_faaaa's first dimension."""
    H = shape["blocks.0.att.time_faaaa"][0]
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


def state_layout(n_layer: int, C: int, H: int, S: int) -> list[tuple[str, tuple]]:
    """Per-slot state: previous LN outputs and the per-head kv matrix [h, key, value]."""
    out = []
    for i in range(n_layer):
        b = f"blocks.{i}."
        out += [(b + "att_x", (C,)), (b + "att_kv", (H, S, S)), (b + "ffn_x", (C,))]
    return out
