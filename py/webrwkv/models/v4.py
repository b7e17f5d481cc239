"""RWKV v4: canonical tensor names and shapes, detection rule, state layout."""

from __future__ import annotations

VERSION = "v4"

# official suffix -> converted suffix (v4 names are the same in both layouts)
RENAMES: dict[str, str] = {}
# other stored names for the same tensor -> canonical name
ALIASES = {"time_faaaa": "time_first"}
# attributes the official layout stores [in, out] (none in v4)
ADAPTERS: tuple[str, ...] = ()
# stored shapes of vectors that are not [C] in the checkpoint files (canonical: flat [C])
STORED_SHAPES = {"time_mix_k": "1,1,C", "time_mix_v": "1,1,C", "time_mix_r": "1,1,C"}


def detect(names: set[str]) -> bool:
    """v4 has time_first (or time_faaaa) and no gate."""
    has_first = "blocks.0.att.time_first" in names or "blocks.0.att.time_faaaa" in names
    return has_first and "blocks.0.att.gate.weight" not in names


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


def state_layout(n_layer: int, C: int, H: int, S: int) -> list[tuple[str, tuple]]:
    """Per-slot state: previous LN outputs and the (aa, bb, pp) wkv accumulators."""
    out = []
    for i in range(n_layer):
        b = f"blocks.{i}."
        out += [(b + "att_x", (C,)), (b + "att_aa", (C,)), (b + "att_bb", (C,)), (b + "att_pp", (C,)),
                (b + "ffn_x", (C,))]
    return out
