"""LoRA merging at load time: fold `X.lora_A`/`X.lora_B` pairs (and whole replacement tensors)
from a safetensors file into a model's canonical weights.

Rules (the same as the RWKV-LM-LoRA merge step):
  * every pair `X.lora_A` [r, in] and `X.lora_B` [out, r] adds (alpha / r) * B @ A to the model's
    `X.weight` (or `X`, e.g. the v7 adapters `blocks.N.att.w1`); alpha defaults to r (scale 1);
  * every other tensor whose name is a model tensor replaces it (e.g. trained time_* vectors,
    layer norms, emb/head); its shape is checked.
Names may use the official or the converted layout; the file's `layout` metadata says which way its
adapter matrices lie (default official, [in, out], so the delta B @ A is transposed into canonical form).
"""

from __future__ import annotations

import os
import numpy as np

from .errors import ModelFormatError, SourceError, WebRwkvError
from .models import ModelInfo
from .models.loader import canonical_name, is_adapter, stored_shape
from .safetensors import read_header, tensor_to_numpy
from .sources import open_source

_FLOATS = ("F32", "F16", "BF16")


def parse_spec(spec: str) -> tuple[str, float | None]:
    """'path' or 'path:alpha' -> (path, alpha or None). A suffix that is not a number stays in the path."""
    spec = os.fspath(spec)
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            alpha = float(tail)
        except ValueError:
            return spec, None
        if not np.isfinite(alpha):
            raise WebRwkvError(f"LoRA alpha {tail!r} in {spec!r} is not a finite number; use FILE or FILE:ALPHA")
        return head, alpha
    return spec, None


def read_lora(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a LoRA safetensors file as float32 ({name: array}, metadata)."""
    if path.endswith((".pth", ".pt")) and "://" not in path:
        raise ModelFormatError(f"the LoRA file {path!r} is a PyTorch checkpoint; save its tensors as "
                               "safetensors (same names) and pass that file")
    try:
        src = open_source(path)
    except (OSError, SourceError) as e:
        raise ModelFormatError(f"cannot read the LoRA file {path!r} ({e}); "
                               "pass an existing .safetensors file as --lora FILE[:ALPHA]") from None
    try:
        header = read_header(src)
        out = {}
        for name, t in header.tensors.items():
            if t.dtype not in _FLOATS:
                raise ModelFormatError(f"LoRA file {path!r}: tensor '{name}' is {t.dtype}; "
                                       "LoRA tensors must be F32, F16 or BF16")
            out[name] = tensor_to_numpy(t, src.read(t.start, t.nbytes))
        return out, dict(header.metadata)
    except (OSError, SourceError) as e:
        raise ModelFormatError(f"cannot read the LoRA file {path!r} ({e}); check the file") from None
    finally:
        src.close()


def _target(name: str, info: ModelInfo, weights: dict, path: str, base: bool = False) -> str:
    """The canonical model tensor a name in the LoRA file refers to (a LoRA base `X` may mean `X.weight`)."""
    for cand in (name + ".weight", name) if base else (name,):
        cname = canonical_name(cand, info.version)
        if cname in weights:
            return cname
    raise ModelFormatError(f"LoRA file {path!r}: tensor '{name}' matches no tensor of this RWKV {info.version} "
                           f"model ({info.n_layer} layers); is the LoRA made for another model?")


def _to_canonical(cname: str, a: np.ndarray, info: ModelInfo, want: tuple, layout: str,
                  what: str, path: str) -> np.ndarray:
    """A tensor (or delta) as the file lays it out -> canonical shape `want`, or a clear error."""
    if len(want) == 1:
        if a.size != want[0]:
            raise ModelFormatError(f"LoRA file {path!r}: {what} has shape {list(a.shape)} but the model's "
                                   f"'{cname}' has {want[0]} values")
        return a.reshape(want)
    flip = layout == "official" and is_adapter(cname, info.version)
    expect = stored_shape(cname, want, info, layout)
    if tuple(a.shape) != tuple(expect):
        raise ModelFormatError(f"LoRA file {path!r}: {what} has shape {list(a.shape)} but the model's "
                               f"'{cname}' needs {list(expect)} ({layout} layout)")
    return np.swapaxes(a, -1, -2) if flip else a


def merge_lora(info: ModelInfo, weights: dict[str, np.ndarray], spec: str) -> dict[str, np.ndarray]:
    """Return new canonical weights with the LoRA file of `spec` ('FILE' or 'FILE:ALPHA') merged in.

    The input dict and its arrays are left unchanged; only merged or replaced tensors are new arrays.
    """
    path, alpha = parse_spec(spec)
    tensors, meta = read_lora(path)
    layout = meta.get("layout", "official")
    if layout not in ("official", "converted"):
        raise ModelFormatError(f"LoRA file {path!r}: metadata layout={layout!r}; use 'official' or 'converted'")
    out = dict(weights)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for name, a in tensors.items():
        for part in ("lora_A", "lora_B"):
            if name.endswith("." + part):
                pairs.setdefault(name[: -len(part) - 1], {})[part] = a
                break
        else:  # a whole tensor: replaces the model's
            cname = _target(name, info, weights, path)
            out[cname] = np.ascontiguousarray(
                _to_canonical(cname, a, info, weights[cname].shape, layout, f"tensor '{name}'", path), np.float32)
    if not tensors:
        raise ModelFormatError(f"LoRA file {path!r} holds no tensors; check you have the right file")
    for base, pair in pairs.items():
        if len(pair) != 2:
            missing = "lora_B" if "lora_A" in pair else "lora_A"
            raise ModelFormatError(f"LoRA file {path!r}: '{base}.{missing}' is missing (each LoRA needs "
                                   f"both {base}.lora_A and {base}.lora_B)")
        A, B = pair["lora_A"], pair["lora_B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1] or A.shape[0] == 0:
            raise ModelFormatError(f"LoRA file {path!r}: '{base}.lora_A' {list(A.shape)} and '{base}.lora_B' "
                                   f"{list(B.shape)} do not fit: need A [r, in] and B [out, r] of the same rank r > 0")
        cname = _target(base, info, weights, path, base=True)
        if len(weights[cname].shape) != 2:
            raise ModelFormatError(f"LoRA file {path!r}: '{base}' is a LoRA pair but '{cname}' is not a matrix")
        r = A.shape[0]
        scale = (alpha if alpha is not None else r) / r
        delta = B.astype(np.float64) @ A.astype(np.float64)
        delta = _to_canonical(cname, delta, info, weights[cname].shape, layout, f"'{base}' (B @ A)", path)
        out[cname] = (out[cname] + scale * delta).astype(np.float32)
    return out
