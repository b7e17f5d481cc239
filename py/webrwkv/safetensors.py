"""Safetensors header parsing and validation (pure Python, runs in Pyodide), plus
numpy functions to decode tensor bytes and to write safetensors files (through the official library).

Headers are parsed here, not with the official `safetensors` library: it reads whole local files
(memory-mapped or by path), so it cannot read a header from an HTTP range source, from the bytes the
browser fetched, or inside Pyodide (it is a compiled extension). Writing, natively only, goes through it.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ModelFormatError

# safetensors dtype name -> bytes per element (the dtypes webrwkv reads)
DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1}
# Limits on what a header may hold (docs/ARCHITECTURE.md, "Limits"). The largest real RWKV header is about
# 200 KB (~1,700 tensors of ~110 bytes each); 4 MiB keeps a 20x margin and bounds json.loads to ~100 MB.
MAX_HEADER = 4 << 20
MAX_DIMS = 8  # RWKV tensors have at most 3 dimensions
MAX_DIM = 1 << 40  # no dimension of a real tensor comes near 10^12
LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's place in the file: absolute byte offsets [start, end)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class SafetensorsHeader:
    """The parsed header: tensor index by name, `__metadata__`, where data starts, file size."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0
    file_size: int = 0


def _source_name(source: Any) -> str:
    return str(getattr(source, "name", None) or "the model file")


def _is_local(source: Any) -> bool:
    """A file on this machine (not bytes that came over HTTP, natively or in the browser)."""
    from .sources import LocalFileSource

    return isinstance(source, LocalFileSource)


def _check_not_model(prefix: bytes, name: str, local: bool = False) -> None:
    """Recognise the common "downloaded the wrong thing" cases from the first bytes, worded by where they came
    from: a local file or a server's answer."""
    if prefix.startswith(LFS_MAGIC):
        text = prefix[:512].decode("utf-8", "replace")
        size = next((ln.split()[1] for ln in text.splitlines() if ln.startswith("size ") and len(ln.split()) > 1), "?")
        raise ModelFormatError(
            f"{name} is a Git LFS pointer file, not the model (the real file has {size} bytes): "
            "fetch the real file, e.g. run `git lfs pull` in the repository, "
            "or download the 'resolve' URL instead of the 'blob' one"
        )
    head = prefix[:1024].lstrip().lower()
    if head.startswith(b"<") and (b"<html" in head or b"<!doctype html" in head or b"<head" in head):
        if local:
            raise ModelFormatError(
                f"{name} is an HTML page, not a model (a web page saved in place of the download?): "
                "download the raw .safetensors file (e.g. a 'resolve' link, not the page that shows it)"
            )
        raise ModelFormatError(
            f"{name}: the server returned a web page, not a model (a login page, an error page or a wrong URL?): "
            "check the URL points at the raw .safetensors file (e.g. a 'resolve' link) and that it needs no login"
        )
    start = prefix[:64]
    if len(start) >= 8 and all(32 <= c < 127 or c in b"\t\r\n" for c in start):
        snippet = start[:40].decode("ascii")
        hint = ("a saved error message?): check the path" if local
                else "an error message from the server?): check the URL")
        raise ModelFormatError(f"{name} is a text file, not a safetensors model (it starts with {snippet!r}; {hint}")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def clip(value: Any, limit: int = 60) -> str:
    """repr(value) shortened for an error message (header values may be megabytes long or deeply nested)."""
    if isinstance(value, (list, str)) and len(value) > limit:
        value = value[:limit]
    elif isinstance(value, dict) and len(value) > 4:
        value = dict(list(value.items())[:4])
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # a list nested hundreds deep, an int of thousands of digits
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_entry(name: str, entry: Any, data_start: int, src: str) -> TensorInfo:
    name_ = name if len(name) <= 60 else name[:60] + "..."
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise ModelFormatError(
            f"{src}: header entry for tensor '{name_}' needs dtype, shape and data_offsets: the file is damaged; "
            "download or convert it again"
        )
    dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise ModelFormatError(
            f"{src}: tensor '{name_}' has dtype {clip(dtype)}, which webrwkv cannot read "
            f"(it reads {', '.join(DTYPE_SIZES)}): save the model as F32, F16 or BF16"
        )
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_int(d) and 0 <= d <= MAX_DIM for d in shape):
        raise ModelFormatError(
            f"{src}: tensor '{name_}' has an invalid shape {clip(shape)} (need at most {MAX_DIMS} dimensions, "
            f"each 0..{MAX_DIM}): the file is damaged")
    if not (isinstance(offs, list) and len(offs) == 2 and all(_int(o) for o in offs) and 0 <= offs[0] <= offs[1]):
        raise ModelFormatError(
            f"{src}: tensor '{name_}' has out-of-range data_offsets {clip(offs)} "
            "(need [begin, end] with 0 <= begin <= end): the file is damaged; download or convert it again"
        )
    info = TensorInfo(name, dtype, tuple(shape), data_start + offs[0], data_start + offs[1])
    want = info.numel * DTYPE_SIZES[dtype]
    if info.nbytes != want:
        raise ModelFormatError(
            f"{src}: tensor '{name_}' ({dtype} {list(shape)}) needs {want} bytes but its data_offsets "
            f"span {info.nbytes}: the file is damaged; download or convert it again"
        )
    return info


def parse_header(header: bytes, file_size: int, name: str = "the model file") -> SafetensorsHeader:
    """Validate the JSON header bytes (without the 8-byte length) of a file of `file_size` bytes."""
    data_start = 8 + len(header)
    if len(header) > MAX_HEADER:
        raise ModelFormatError(f"{name}: the header has {len(header)} bytes, over the {MAX_HEADER >> 20} MB "
                               "a model header can need: not a safetensors model (or it is damaged)")
    why = ""
    try:
        obj = json.loads(bytes(header).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        why = str(e)
    except ValueError:  # int() refuses numbers of thousands of digits
        why = "it holds a number with thousands of digits"
    except RecursionError:
        why = "it nests deeper than any header"
    if why:
        raise ModelFormatError(
            f"{name}: the safetensors header is not valid JSON ({why}): the file is damaged or not "
            "a safetensors file; download or convert it again"
        ) from None
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{name}: the safetensors header is not a JSON object: not a safetensors file")
    meta = obj.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFormatError(f"{name}: __metadata__ must be a JSON object of strings, not {clip(meta)}: "
                               "the file is damaged")
    tensors = {k: _parse_entry(k, v, data_start, name) for k, v in obj.items()}
    spans = sorted((t for t in tensors.values() if t.nbytes), key=lambda t: t.start)
    for a, b in zip(spans, spans[1:]):
        if b.start < a.end:
            raise ModelFormatError(
                f"{name}: tensors {clip(a.name)} and {clip(b.name)} overlap in the file: the file is damaged; "
                "download or convert it again"
            )
    if spans and spans[-1].end > file_size:
        last = spans[-1]
        raise ModelFormatError(
            f"{name} is truncated: tensor {clip(last.name)} ends at byte {last.end} but the file has only "
            f"{file_size} bytes (an interrupted download?): download the file again"
        )
    return SafetensorsHeader(tensors, meta, data_start, file_size)


def read_header(source: Any) -> SafetensorsHeader:
    """Read and validate the header from a byte source (or a path, URL or bytes), never the tensor data."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        from .sources import BytesSource

        source = BytesSource(source)
    if isinstance(source, (str, os.PathLike)):
        from .sources import open_source

        with open_source(source) as src:
            return read_header(src)
    name, size = _source_name(source), int(source.size)
    n = struct.unpack("<Q", source.read(0, 8))[0] if size >= 8 else -1
    if n < 0 or n > MAX_HEADER or 8 + n > size:
        # Not a plausible header: text files land here (their 8th byte makes n huge), so say what it is.
        _check_not_model(source.read(0, min(size, 1024)), name, _is_local(source))
    if n < 0:
        raise ModelFormatError(f"{name} has only {size} bytes: it is not a safetensors file; download it again")
    if n > MAX_HEADER:
        raise ModelFormatError(
            f"{name}: header length {n} is over the {MAX_HEADER >> 20} MB a model header can need: "
            "this is not a safetensors file (or it is damaged); check you have the right file"
        )
    if 8 + n > size:
        raise ModelFormatError(
            f"{name}: header length {n} goes past the end of the file ({size} bytes): the file is truncated "
            "or not a safetensors file; download it again"
        )
    header = source.read(8, n)
    return parse_header(header, size, name)


_STORED = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I8": "i1", "U8": "u1"}


def tensor_view(info: TensorInfo, raw: Any) -> Any:
    """A tensor's raw little-endian bytes as a numpy array of its stored dtype and shape, without a copy
    (BF16 as uint16 bit patterns; read-only when `raw` is)."""
    import numpy as np

    if len(raw) != info.nbytes:
        raise ModelFormatError(f"tensor '{info.name}': got {len(raw)} bytes, expected {info.nbytes}")
    return np.frombuffer(raw, dtype=_STORED[info.dtype]).reshape(info.shape)


def tensor_to_numpy(info: TensorInfo, raw: Any) -> Any:
    """Decode a tensor's raw little-endian bytes to a float32 numpy array of its shape."""
    import numpy as np

    a = tensor_view(info, raw)
    if info.dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def read_tensor(source: Any, info: TensorInfo) -> Any:
    """Read one tensor from a byte source and decode it to float32 numpy."""
    return tensor_to_numpy(info, source.read(info.start, info.nbytes))


def float32_to_bf16_bits(a: Any) -> Any:
    """Round float32 values to bfloat16 (round to nearest even), as uint16 bit patterns."""
    import numpy as np

    a = np.asarray(a, dtype=np.float32, order="C")  # 0-d stays 0-d
    bits = a.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), np.uint16(0x7FC0), rounded)


_WRITE_DTYPES = {"fp32": "F32", "f32": "F32", "fp16": "F16", "f16": "F16", "bf16": "BF16"}


def _encode(name: str, arr: Any, dtype: str | None) -> tuple[str, bytes | Any]:
    import numpy as np

    arr = np.asarray(arr)
    if arr.dtype == np.int8 or arr.dtype == np.uint8:
        return ("I8" if arr.dtype == np.int8 else "U8"), np.asarray(arr, order="C")
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"write_safetensors: tensor '{name}' has unsupported numpy dtype {arr.dtype}")
    st = _WRITE_DTYPES.get((dtype or "").lower(), dtype.upper() if dtype else None)
    if st is None:
        st = "F16" if arr.dtype == np.float16 else "F32"
    if st == "F32":
        return st, np.asarray(arr, dtype="<f4", order="C")
    if st == "F16":
        return st, np.asarray(arr, dtype="<f2", order="C")
    if st == "BF16":
        return st, float32_to_bf16_bits(arr.astype(np.float32)).astype("<u2")
    raise ValueError(f"write_safetensors: unknown dtype {dtype!r} (use fp32, fp16 or bf16)")


_LIBRARY_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8"}


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    dtype: str | Mapping[str, str] | None = None,
) -> None:
    """Write {name: array} as safetensors with the official library. Float arrays are stored as `dtype`
    (fp32, fp16 or bf16; a str for all or a {name: dtype} map; None keeps fp16 as F16, else F32); int8/uint8
    stay I8/U8. The file is written in a private folder made next to `path` (mkdtemp: created exclusively,
    mode 0700) and renamed into place, so no existing name is followed and a failed write leaves nothing."""
    try:
        from safetensors import SafetensorError, TensorSpec, serialize_file
    except ImportError:
        raise OSError("writing safetensors files needs the safetensors package: pip install 'webrwkv[native]'") from None
    encoded = {}
    for name in sorted(tensors):
        d = dtype.get(name) if isinstance(dtype, Mapping) else dtype
        encoded[name] = _encode(name, tensors[name], d)
    specs = {name: TensorSpec(dtype=_LIBRARY_DTYPES[st], shape=list(arr.shape), data_ptr=arr.ctypes.data,
                              data_len=arr.nbytes) for name, (st, arr) in encoded.items()}
    meta = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    target = os.path.abspath(os.fspath(path))
    tmpdir = tempfile.mkdtemp(prefix=".webrwkv-write-", dir=os.path.dirname(target))
    try:
        tmp = os.path.join(tmpdir, "model.safetensors")
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = os.stat(tmp).st_mode & 0o777  # what a new file gets here (the umask applied)
        try:
            serialize_file(specs, tmp, metadata=meta)  # `encoded` keeps every array alive meanwhile
        except SafetensorError as e:
            raise OSError(f"the safetensors library could not write the file ({e})") from None
        os.chmod(tmp, mode)  # the library writes its own private (0600) file
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
