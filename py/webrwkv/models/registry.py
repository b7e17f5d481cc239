"""The registry of versions and the canonical model form: ModelInfo, TensorRef, detection, canonical
shapes, state layout and the bundled model's path."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError, WebRwkvError
from . import v4, v5, v6, v7, v7de

# every supported version, newest first (detection tries them in this order; v7de before the v7 it extends)
VERSIONS = {m.VERSION: m for m in (v7de, v7, v6, v5, v4)}


@dataclass
class ModelInfo:
    """Sizes and provenance of a model. head_size is n_embd for v4 (one head)."""

    version: str
    n_layer: int
    n_embd: int
    n_head: int
    head_size: int
    vocab: int
    dim_ffn: int
    dims: dict = field(default_factory=dict)  # v6: time_maa, time_decay; v7: w, a, v, g; v7de: and s
    layout: str = "official"  # or "converted"
    dtype: str = "fp32"  # stored dtype: fp32 | fp16 | bf16 (the most common one)
    path: str = ""
    nbytes: int = 0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class TensorRef:
    """Where a canonical tensor lives in the file and how to reach its canonical form.

    transform: 'none', 'transpose' (swap the last two axes) or 'reshape' (squeeze/flatten).
    offset is absolute in the file; nbytes is the stored size.
    """

    name: str
    dtype: str  # safetensors dtype: F32 | F16 | BF16
    shape: tuple
    offset: int
    nbytes: int
    transform: str
    canonical_shape: tuple


def detect_version(names) -> str:
    """'v4' | 'v5' | 'v6' | 'v7' | 'v7de' from tensor names (official or converted)."""
    names = set(names)
    for version, mod in VERSIONS.items():
        if mod.detect(names):
            return version
    if names and all(n.endswith(".att.time_state") for n in names):
        raise ModelFormatError("the file holds only blocks.N.att.time_state: a state file, not a model; load "
                               "the model it was tuned for and pass this file with --state (engine.loadState "
                               "in the browser)")
    raise ModelFormatError(
        "cannot tell the RWKV version from the tensor names (expected e.g. blocks.0.att.time_first, "
        "time_faaaa, gate.weight, time_maa_x or r_k); is this an RWKV v4-v7 checkpoint?")


def model_shapes(info: ModelInfo) -> dict[str, tuple]:
    """Every canonical tensor name of the model and its canonical shape."""
    C, V = info.n_embd, info.vocab
    out = {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,)}
    mod = VERSIONS[info.version]
    for i in range(info.n_layer):
        for n in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"):
            out[f"blocks.{i}.{n}"] = (C,)
        out.update(mod.layer_shapes(i, C, info.n_head, info.head_size, info.dim_ffn, info.dims))
    tables = getattr(mod, "token_tables", None)  # per-layer tensors with one row per vocabulary entry
    if tables is not None:
        out.update(tables(info.n_layer, V, info.dims))
    out.update({"ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)})
    return out


def optional_names(info: ModelInfo) -> tuple[str, ...]:
    """Canonical names a checkpoint may leave out."""
    return getattr(VERSIONS[info.version], "OPTIONAL", ())


def state_layout(info: ModelInfo) -> list[tuple[str, tuple]]:
    """[(name, shape)] of one slot's state, as in docs/ARCHITECTURE.md."""
    mod = VERSIONS[info.version]
    return mod.state_layout(info.n_layer, info.n_embd, info.n_head, info.head_size)


def init_state(info: ModelInfo) -> dict[str, np.ndarray]:
    """A fresh slot state: zeros, except where the version's STATE_INIT says (v4's running maximum)."""
    init = getattr(VERSIONS[info.version], "STATE_INIT", {})
    return {name: np.full(shape, init.get(name.rsplit(".", 1)[1], 0.0), dtype=np.float32)
            for name, shape in state_layout(info)}


def tuned_state_names(info: ModelInfo) -> dict[str, str]:
    """{canonical tensor name: state entry} of a state-tuned checkpoint or a state file (the version's
    TUNED_STATE, e.g. blocks.{i}.att.time_state -> blocks.{i}.att_kv); empty where a version has none (v4)."""
    tuned = getattr(VERSIONS[info.version], "TUNED_STATE", {})
    return {f"blocks.{i}.{w}": f"blocks.{i}.{s}" for i in range(info.n_layer) for w, s in tuned.items()}


def initial_state(info: ModelInfo, tensors: dict) -> dict[str, np.ndarray]:
    """A slot's state before any token: init_state, with every state entry a state-tuned checkpoint (or a
    state file) gives in `tensors` (canonical tensors by name, as load_weights returns them)."""
    state = init_state(info)
    for name, entry in tuned_state_names(info).items():
        if name in tensors:
            state[entry] = np.array(tensors[name], dtype=np.float32).reshape(state[entry].shape)
    return state


def default_model_path() -> str:
    """The bundled model: $WEBRWKV_MODEL, else the repository's models/*.st."""
    env = os.environ.get("WEBRWKV_MODEL")
    if env:
        if "://" not in env and not Path(env).is_file():
            raise WebRwkvError(f"WEBRWKV_MODEL={env} is not a file; set it to a model file or URL")
        return env
    folder = Path(__file__).resolve().parents[3] / "models"
    found = sorted(folder.glob("*.st")) if folder.is_dir() else []
    if not found:
        raise WebRwkvError(
            "there is no bundled model (models/*.st is missing); pass --model PATH "
            "or set WEBRWKV_MODEL")
    return str(found[0])
