"""State files: a tuned initial state (blocks.N.att.time_state in a safetensors or torch.save file) as a slot
state of a given model, shape-checked against it."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..checkpoints import read_model_header
from ..errors import ModelFormatError, WebRwkvError
from .loader import canonical_name, is_adapter, opened, to_canonical
from .registry import ModelInfo, TensorRef, initial_state, state_layout, tuned_state_names

_FLOATS = ("F32", "F16", "BF16")


def read_state(source_or_path: Any, info: ModelInfo, name: str = "") -> dict[str, np.ndarray]:
    """The slot state a state file gives the model `info`: its tuned entries (e.g. every layer's att_kv from
    blocks.N.att.time_state, stored [H, value, key] like a state-tuned checkpoint's) over a fresh state.

    `source_or_path` is a path, URL or byte source of a safetensors or .pth file. A file that holds no tuned
    state, or one made for another model (layers, heads, head size), raises ModelFormatError."""
    label = name or (os.fspath(source_or_path) if isinstance(source_or_path, (str, os.PathLike))
                     else str(getattr(source_or_path, "name", "the state file")))
    tuned = tuned_state_names(info)
    if not tuned:
        raise WebRwkvError(f"RWKV {info.version} models have no tunable state (no att_kv matrices); state files "
                           "are for v5, v6 and v7 models")
    layout = dict(state_layout(info))
    with opened(source_or_path) as src:
        header = read_model_header(src)
        file_layout = header.metadata.get("layout", "official")
        found = {canonical_name(n, info.version): t for n, t in header.tensors.items()}
        attrs = {n.split(".", 2)[2] for n in tuned}
        layers = sorted({int(n.split(".")[1]) for n in found if n.startswith("blocks.") and n.count(".") >= 2
                         and n.split(".")[1].isdigit() and n.split(".", 2)[2] in attrs})
        if not layers:
            some = ", ".join(sorted(header.tensors)[:3]) or "no tensors"
            want = next(iter(tuned))
            raise ModelFormatError(f"{label}: holds no tuned state (no '{want}' ...; it has {some}); "
                                   "pass a state file made by state tuning")
        if layers != list(range(info.n_layer)):
            plural = "s" * (len(layers) != 1)
            raise ModelFormatError(f"{label}: the state has {len(layers)} layer{plural} ({_span(layers)}), this model "
                                   f"has {info.n_layer} (0-{info.n_layer - 1}); it was tuned for another model")
        refs = {}
        for cname, entry in tuned.items():
            t = found.get(cname)
            if t is None:
                raise ModelFormatError(f"{label}: '{cname}' is missing; a tuned state needs every layer")
            if t.dtype not in _FLOATS:
                raise ModelFormatError(f"{label}: '{t.name}' is {t.dtype}; state tensors must be F32, F16 or BF16")
            want = tuple(layout[entry])
            if tuple(t.shape) != want:
                raise ModelFormatError(
                    f"{label}: '{t.name}' has shape {list(t.shape)}; this model ({info.n_head} heads of "
                    f"{info.head_size}) needs {list(want)}: the state was tuned for another model")
            flip = file_layout != "converted" and is_adapter(cname, info.version)
            refs[cname] = TensorRef(t.name, t.dtype, tuple(t.shape), t.start, t.nbytes,
                                    "transpose" if flip else "none", want)
        spans = [(r.offset, r.nbytes) for r in refs.values()]
        raws = src.read_ranges(spans) if hasattr(src, "read_ranges") else [src.read(o, n) for o, n in spans]
        tensors = {n: to_canonical(r, raw) for (n, r), raw in zip(refs.items(), raws)}
    bad = [n for n, a in tensors.items() if not np.isfinite(a).all()]
    if bad:
        raise ModelFormatError(f"{label}: '{refs[bad[0]].name}' holds NaN or infinite values; the state is damaged")
    return initial_state(info, tensors)


def _span(layers: list[int]) -> str:
    if len(layers) == 1:
        return str(layers[0])
    return f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else str(layers)
