"""Map a checkpoint (safetensors or torch.save .pth; official or converted layout; fp32, fp16 or bf16) to the
canonical form."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from ..errors import ModelFormatError
from ..checkpoints import CheckedSource, read_model_header
from ..safetensors import SafetensorsHeader, TensorInfo, clip, tensor_to_numpy, tensor_view
from ..sources import open_source
from .registry import (VERSIONS, ModelInfo, TensorRef, detect_version, model_shapes, optional_names, state_layout,
                       tuned_state_names)

_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}
_ATTR = re.compile(r"^(blocks\.\d+\.(?:att|ffn)\.)(.+)$")
_LAYER = re.compile(r"blocks\.(0|[1-9][0-9]{0,8})\.[^.]")  # blocks.<0..999999999 without leading zeros>.<name>


@contextmanager
def opened(source_or_path: Any) -> Iterator[Any]:
    """Yield a byte source with .read(offset, length) and .size; open paths/URLs (and close them)."""
    if not isinstance(source_or_path, (str, os.PathLike)):
        yield source_or_path
        return
    src = open_source(os.fspath(source_or_path))
    if not hasattr(src, "view"):  # remote: a .pth's zip headers are checked as its tensors are read
        src = CheckedSource(src)
    try:
        yield src
    finally:
        src.close()


def _source_path(src: Any) -> str:
    return str(getattr(src, "url", None) or getattr(src, "name", None) or getattr(src, "path", ""))


def canonical_name(name: str, version: str) -> str:
    """The canonical (official) name of a tensor named in either layout."""
    m = _ATTR.match(name.lower())
    if not m:
        return name.lower()
    prefix, attr = m.groups()
    mod = VERSIONS[version]
    for official, converted in mod.RENAMES.items():
        if attr.startswith(converted):
            attr = official + attr[len(converted):]
    return prefix + getattr(mod, "ALIASES", {}).get(attr, attr)


def layout_name(name: str, version: str, layout: str) -> str:
    """The name a canonical tensor has in `layout` ('official' or 'converted')."""
    m = _ATTR.match(name)
    if layout == "official" or not m:
        return name
    prefix, attr = m.groups()
    for official, converted in VERSIONS[version].RENAMES.items():
        if attr.startswith(official):
            attr = converted + attr[len(official):]
    return prefix + attr


def is_adapter(name: str, version: str) -> bool:
    """True for tensors the official layout stores [in, out] (transposed against canonical)."""
    m = _ATTR.match(name)
    return bool(m) and m.group(2) in VERSIONS[version].ADAPTERS


def _detect_layout(version: str, names: set, shapes: dict, meta: dict, C: int) -> str:
    hint = meta.get("layout", "official")
    return VERSIONS[version].detect_layout(names, shapes, hint if hint in ("official", "converted") else "official", C)


def _layer_count(names: list[str], path: str) -> int:
    """N for layers blocks.0 .. blocks.N-1, refusing malformed indices and gaps (an index of 10^7 once made
    the loader build shapes for ten million layers before any check)."""
    seen: set[int] = set()
    for n in names:
        if n.startswith("blocks."):
            m = _LAYER.match(n)
            if not m:
                raise ModelFormatError(f"{path}: tensor {clip(n)} is not named blocks.<layer>.<name> with a layer "
                                       "number 0, 1, 2, ...: the checkpoint is damaged or not RWKV")
            seen.add(int(m.group(1)))
    count = len(seen)
    if seen != set(range(count)):
        gap = next(i for i in range(count) if i not in seen)
        raise ModelFormatError(f"{path}: the layers must be numbered 0..N-1 without gaps, but there is a "
                               f"blocks.{max(seen)} and no blocks.{gap}: the checkpoint is damaged")
    return count


def _check_ranks(tensors: dict[str, TensorInfo], version: str, path: str) -> None:
    """Every model tensor has a dimension and no empty one, and matrices have their canonical rank, so the
    size rules below read only well-formed shapes (a 1-D emb.weight or an r_k of 0 rows once crashed them)."""
    probe = ModelInfo(version, 1, 64, 1, 64, 64, 64, defaultdict(lambda: 1))
    ranks = {n: len(shape) for n, shape in model_shapes(probe).items()}
    for t in tensors.values():
        cname = re.sub(r"^blocks\.\d+\.", "blocks.0.", canonical_name(t.name, version))
        if cname not in ranks:
            continue  # tensors the model does not use are ignored, as below
        rank = ranks[cname]
        if not t.shape or 0 in t.shape or (rank > 1 and len(t.shape) != rank):
            want = f"{rank} dimensions" if rank > 1 else "at least one dimension"
            raise ModelFormatError(f"{path}: tensor {clip(t.name)} has shape {list(t.shape)}; RWKV {version} "
                                   f"needs {want}, none of them 0: the checkpoint is damaged")


def _check_room(info: ModelInfo, count: int, path: str) -> None:
    """Refuse a layer count the file's tensors cannot come near filling before building the shapes of every
    layer (so that work stays linear in the header); a file a few tensors short gets the message naming them."""
    one, two = (len(model_shapes(ModelInfo(**{**info.to_dict(), "n_layer": n}))) for n in (1, 2))
    need = one + (info.n_layer - 1) * (two - one) - len(optional_names(info))
    if 2 * count < need:
        raise ModelFormatError(f"{path}: the file names {info.n_layer} layers but holds only {count} tensors; "
                               f"RWKV {info.version} needs {need}: the checkpoint is incomplete or damaged")


def index_header(header: SafetensorsHeader, path: str = "") -> tuple[ModelInfo, dict[str, TensorRef]]:
    """Build (ModelInfo, {canonical_name: TensorRef}) from a parsed safetensors header."""
    names = set(header.tensors)
    version = detect_version(names)
    for need in ("emb.weight", "blocks.0.ffn.key.weight"):
        if need not in names:
            raise ModelFormatError(f"{path or 'model'}: tensor '{need}' is missing; the checkpoint is incomplete")
    _check_ranks(header.tensors, version, path)
    n_layer = _layer_count([n.lower() for n in names], path)
    V, C = header.tensors["emb.weight"].shape
    src_shapes = {n: t.shape for n, t in header.tensors.items()}
    try:
        layout = _detect_layout(version, names, src_shapes, header.metadata, C)
    except KeyError as e:
        raise ModelFormatError(f"{path}: tensor '{e.args[0]}' is missing; the checkpoint is incomplete") from None

    infos: dict[str, TensorInfo] = {}
    cshapes: dict[str, tuple] = {}
    transposed: set[str] = set()
    for n, t in header.tensors.items():
        cname = canonical_name(n, version)
        if cname in infos:
            raise ModelFormatError(f"{path}: tensors '{infos[cname].name}' and '{n}' both map to '{cname}'")
        infos[cname] = t
        shape = t.shape
        if layout == "official" and is_adapter(cname, version) and len(shape) >= 2:
            shape = shape[:-2] + (shape[-1], shape[-2])
            transposed.add(cname)
        cshapes[cname] = shape

    try:
        H, S, dims = VERSIONS[version].sizes(cshapes, C)
    except KeyError as e:
        raise ModelFormatError(f"{path}: tensor '{e.args[0]}' is missing; the checkpoint is incomplete") from None
    except ModelFormatError as e:
        raise ModelFormatError(f"{path}: {e}") from None
    if H <= 0 or C % H:
        raise ModelFormatError(f"{path}: {C} channels do not split into {H} heads; the checkpoint is damaged")
    F = cshapes["blocks.0.ffn.key.weight"][0]
    counts: dict[str, int] = {}
    for t in header.tensors.values():
        counts[t.dtype] = counts.get(t.dtype, 0) + t.nbytes
    dtype = _DTYPES.get(max(counts, key=counts.get), "fp32") if counts else "fp32"
    nbytes = max([t.end for t in header.tensors.values()] + [header.data_start])
    info = ModelInfo(version, n_layer, C, H, S, V, F, dims, layout, dtype, path, nbytes)
    _check_room(info, len(cshapes), path)

    def ref(cname: str, want: tuple) -> TensorRef:
        t, got = infos[cname], cshapes[cname]
        if t.dtype not in _DTYPES:
            raise ModelFormatError(f"{path}: tensor '{t.name}' is {t.dtype}; webrwkv reads F32, F16 and BF16")
        if cname in transposed:
            transform = "transpose"
        elif got != want:
            transform = "reshape"
        else:
            transform = "none"
        bad = got != want if len(want) > 1 else int(np.prod(got)) != want[0]
        if bad:
            raise ModelFormatError(
                f"{path}: tensor '{t.name}' has shape {list(t.shape)}; RWKV {version} ({layout} layout) "
                f"with n_embd={C}, heads={H}, dim_ffn={F} needs {list(want)} (canonical [out, in])")
        return TensorRef(t.name, t.dtype, t.shape, t.start, t.nbytes, transform, want)

    refs: dict[str, TensorRef] = {}
    optional = optional_names(info)
    for cname, want in model_shapes(info).items():
        if cname not in infos:
            if cname in optional:
                continue
            src = layout_name(cname, version, layout)
            raise ModelFormatError(f"{path}: tensor '{src}' is missing; the checkpoint is incomplete "
                                   f"or not RWKV {version}")
        refs[cname] = ref(cname, want)
    tuned = tuned_state_names(info)  # a state-tuned checkpoint: every layer's initial state
    present = [n for n in tuned if n in infos]
    if present and len(present) < len(tuned):
        missing = layout_name(next(n for n in tuned if n not in infos), version, layout)
        raise ModelFormatError(f"{path}: the checkpoint is state-tuned ('{infos[present[0]].name}') but "
                               f"'{missing}' is missing; a tuned state needs every layer")
    layout_shapes = dict(state_layout(info))
    for cname in present:
        refs[cname] = ref(cname, tuple(layout_shapes[tuned[cname]]))
    return info, refs


def load_index(source_or_path: Any) -> tuple[ModelInfo, dict[str, TensorRef]]:
    """Read only the header: (ModelInfo, {canonical_name: TensorRef})."""
    with opened(source_or_path) as src:
        path = os.fspath(source_or_path) if isinstance(source_or_path, (str, os.PathLike)) else _source_path(src)
        return index_header(read_model_header(src), path)


def to_canonical(ref: TensorRef, raw: Any, keep_fp16: bool = False) -> np.ndarray:
    """Decode one tensor's stored bytes to its canonical float32 array; with `keep_fp16` an F16 matrix
    stays float16 (a view on `raw` unless it needs a transpose), since fp16 -> float32 is exact."""
    t = TensorInfo(ref.name, ref.dtype, ref.shape, ref.offset, ref.offset + ref.nbytes)
    if keep_fp16 and ref.dtype == "F16" and len(ref.canonical_shape) >= 2:
        a = tensor_view(t, raw)
    else:
        a = tensor_to_numpy(t, raw)
    if ref.transform == "transpose":
        a = np.swapaxes(a, -1, -2)
    return np.ascontiguousarray(a.reshape(ref.canonical_shape))


def read_tensor(source: Any, ref: TensorRef) -> np.ndarray:
    """Read one canonical tensor from an open byte source."""
    return to_canonical(ref, source.read(ref.offset, ref.nbytes))


def load_weights(source_or_path: Any, keep_fp16: bool = False) -> tuple[ModelInfo, dict[str, np.ndarray]]:
    """Read the whole model: (ModelInfo, {canonical_name: float32 array}).

    `keep_fp16=True` (the GPU runtime, which packs matrices as fp16 anyway) leaves F16 matrices as
    float16; from a local file they are read-only views on the memory-mapped file, so their bytes are
    read once, when they go to the GPU, and never copied or widened on the way.
    """
    with opened(source_or_path) as src:
        path = os.fspath(source_or_path) if isinstance(source_or_path, (str, os.PathLike)) else _source_path(src)
        info, refs = index_header(read_model_header(src), path)
        spans = [(r.offset, r.nbytes) for r in refs.values()]
        if hasattr(src, "view"):  # a local file: zero-copy views on its memory map
            raws = [src.view(o, n) for o, n in spans]
        elif hasattr(src, "read_ranges"):  # one batched request per run of tensors on HTTP sources
            raws = src.read_ranges(spans)
        else:
            raws = [src.read(o, n) for o, n in spans]
        return info, {n: to_canonical(r, raw, keep_fp16) for (n, r), raw in zip(refs.items(), raws)}


def stored_shape(name: str, shape: tuple, info: ModelInfo, layout: str) -> tuple:
    """The shape a canonical tensor has in a checkpoint of `layout` (official vector shapes;
    adapters [in, out] in the official layout)."""
    m = _ATTR.match(name)
    if not m:
        return tuple(shape)
    attr, mod = m.group(2), VERSIONS[info.version]
    kind = mod.STORED_SHAPES.get(attr) if len(shape) == 1 else None
    if kind == "1,1,C":
        return (1, 1, shape[0])
    if kind == "H,S":
        return (info.n_head, info.head_size)
    if layout == "official" and attr in mod.ADAPTERS:
        return tuple(shape[:-2]) + (shape[-1], shape[-2])
    return tuple(shape)


def to_layout(info: ModelInfo, weights: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """Canonical weights -> {name: array} as stored in the official or the converted layout."""
    out = {}
    for name, a in weights.items():
        m = _ATTR.match(name)
        target = stored_shape(name, a.shape, info, layout)
        if layout == "official" and m and m.group(2) in VERSIONS[info.version].ADAPTERS:
            a = np.swapaxes(a, -1, -2)
        out[layout_name(name, info.version, layout)] = np.ascontiguousarray(a.reshape(target))
    return out


def from_arrays(arrays: dict[str, np.ndarray], metadata: dict | None = None,
                path: str = "") -> tuple[ModelInfo, dict[str, np.ndarray]]:
    """Canonical (info, weights) from in-memory {name: array} in either layout (e.g. a .pth state dict)."""
    tensors, pos = {}, 0
    for name, a in arrays.items():
        n = int(np.prod(a.shape)) * 4
        tensors[name] = TensorInfo(name, "F32", tuple(a.shape), pos, pos + n)
        pos += n
    info, refs = index_header(SafetensorsHeader(tensors, dict(metadata or {}), 0, pos), path)
    info.dtype = "fp32"
    return info, {c: to_canonical(r, np.ascontiguousarray(arrays[r.name], dtype="<f4").tobytes())
                  for c, r in refs.items()}
