"""PyTorch checkpoints (torch.save zip files) as the same tensor index a safetensors header gives,
read by ranges without torch and without running anything from the file; read_model_header() reads either."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelFormatError
from .safetensors import SafetensorsHeader, TensorInfo, read_header
from .sources import ByteSource
from .torchpickle import MAX_PICKLE, TensorDesc, unpickle
from .torchzip import LOCAL, Entry, read_directory

LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # torch's pre-zip files start with it
RESAVE = "torch.save(torch.load(PATH, weights_only=True), 'model.pth')"


@dataclass
class CheckpointIndex(SafetensorsHeader):
    """A .pth file's tensors as a safetensors-style index (absolute byte ranges), plus the local zip
    headers that were predicted rather than read: (offset, expected bytes, tensor names that rely on them)."""

    checks: list[tuple[int, bytes, tuple[str, ...]]] = field(default_factory=list)


def sniff(head: bytes) -> str:
    """'zip' (torch.save since 1.6), 'legacy' (older torch.save), 'pickle', or 'safetensors' (anything else)."""
    if head[:4] == LOCAL or head[:4] == b"PK\x05\x06":
        return "zip"
    if head[:1] == b"\x80" and head[2:4] == b"\x8a\x0a" and head[4:14] == LEGACY_MAGIC:
        return "legacy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "safetensors"


def read_model_header(source: Any, verify: bool = True) -> SafetensorsHeader:
    """The tensor index of a safetensors file or a torch.save checkpoint on a byte source.

    For a checkpoint, `verify=False` leaves the storages' local zip headers unread: their places are
    predicted from the directory and returned as `checks`, which whoever fetches those bytes must compare
    (the browser's streamed load does, at no extra request)."""
    name = str(getattr(source, "name", "") or "the model file")
    kind = sniff(source.read(0, min(int(source.size), 16)))
    if kind == "zip" and isinstance(source, CheckedSource):
        return source.expect(read_checkpoint(source.src, verify=False))
    if kind == "zip":
        return read_checkpoint(source, verify)
    if kind == "legacy":
        raise ModelFormatError(
            f"{name} is a PyTorch checkpoint in the legacy format (torch.save before PyTorch 1.6), whose tensors "
            f"cannot be found without running it: re-save it with a current PyTorch: {RESAVE.replace('PATH', repr(name))}")
    if kind == "pickle":
        raise ModelFormatError(
            f"{name} is a bare Python pickle, not a torch.save checkpoint or a safetensors file; webrwkv never "
            "runs code from a model file: save the weights with torch.save(state_dict, 'model.pth') or as safetensors")
    return read_header(source)


def read_checkpoint(source: Any, verify: bool = True) -> CheckpointIndex:
    """The tensor index of a torch.save zip checkpoint: the zip directory, data.pkl (through the restricted
    unpickler) and the storages' byte ranges. Reads only the zip's tail, the pickle and (with `verify`) the
    storages' local headers, never tensor data."""
    name, size = str(getattr(source, "name", "") or "the model file"), int(source.size)
    entries, cd_off = read_directory(source)
    root = _root(entries, name)
    by_name = {e.name: e for e in entries}
    ends = _next_starts(entries, cd_off)
    pkl = by_name[root + "data.pkl"]
    _check_stored(pkl, name)
    if pkl.size > MAX_PICKLE:
        raise ModelFormatError(f"{name}: its data.pkl has {pkl.size} bytes, far more than a state dict of "
                               "tensors needs: this is not a model checkpoint webrwkv can read")
    small = _read_members(source, [pkl] + ([by_name[root + "byteorder"]] if root + "byteorder" in by_name else []),
                          ends, name)
    order = small.get(root + "byteorder", b"little")
    if order != b"little":
        raise ModelFormatError(f"{name} was saved on a {order[:16].decode('ascii', 'replace')}-endian machine; "
                               "webrwkv reads little-endian tensors: re-save it on a little-endian one")
    tensors = _state_dict(unpickle(small[pkl.name], name), name)
    storages: dict[str, Any] = {}
    for tname, t in tensors.items():
        s = storages.setdefault(t.storage.key, t.storage)
        if s != t.storage:
            raise ModelFormatError(f"{name}: storage {s.key} is described two ways in data.pkl: the file is damaged")
    members = {}
    for key, s in storages.items():
        e = by_name.get(f"{root}data/{key}")
        if e is None:
            raise ModelFormatError(f"{name}: data.pkl refers to storage {key!r}, which the zip does not hold: "
                                   "the file is damaged or incomplete; download it again")
        _check_stored(e, name)
        if e.size != s.numel * s.esize:
            raise ModelFormatError(f"{name}: storage {key} should hold {s.numel} {s.dtype} values "
                                   f"({s.numel * s.esize} bytes) but its zip entry has {e.size}: the file is damaged")
        members[key] = e
    users: dict[str, list[str]] = {}
    for tname, t in tensors.items():
        users.setdefault(t.storage.key, []).append(tname)
    checks: list = []
    try:
        data = None if verify else {e.name: _predict(e, ends[e.name], name) for e in members.values()}
    except ModelFormatError:  # no place follows from the directory (an unusual writer): read the headers
        data = None
    if data is None:
        data = _read_starts(source, list(members.values()), ends, name)
    else:
        for key, e in members.items():
            n, at = len(e.raw_name), e.header_offset
            extra = data[e.name] - at - 30 - n
            checks.append((at, LOCAL, tuple(users[key])))
            checks.append((at + 26, struct.pack("<HH", n, extra) + e.raw_name, tuple(users[key])))
    out = {tname: _info(tname, t, data[members[t.storage.key].name], name) for tname, t in tensors.items()}
    first = min([e.header_offset for e in members.values()] + [size])
    for t in out.values():
        if t.end > size:
            raise ModelFormatError(f"{name} is truncated: tensor '{t.name}' ends at byte {t.end} but the file has "
                                   f"only {size} bytes (an interrupted download?): download the file again")
    return CheckpointIndex(out, {}, first, size, checks)


def _root(entries: list[Entry], name: str) -> str:
    """The archive's folder (torch.save names every member <folder>/...), checked to be a torch.save file."""
    pkls = [e.name for e in entries if e.name.endswith("/data.pkl") and e.name.count("/") == 1]
    names = {e.name.split("/", 1)[-1] for e in entries}
    if "constants.pkl" in names or any(n.startswith("code/") for n in names):
        raise ModelFormatError(f"{name} is a TorchScript archive (torch.jit.save), not a torch.save state dict: "
                               "save the model's weights with torch.save(model.state_dict(), 'model.pth')")
    if len(pkls) == 1:
        return pkls[0][: -len("data.pkl")]
    if len(pkls) > 1:
        raise ModelFormatError(f"{name} holds {len(pkls)} torch.save archives in one zip: save one model per file")
    raise ModelFormatError(f"{name} is a zip file but not a torch.save checkpoint (it has no <name>/data.pkl): "
                           "pass a .pth written by torch.save, or a .safetensors file")


def _check_stored(e: Entry, name: str) -> None:
    if e.flags & 1:
        raise ModelFormatError(f"{name}: zip entry '{e.name}' is encrypted: webrwkv cannot read encrypted zips")
    if e.method != 0 or e.comp_size != e.size:
        raise ModelFormatError(
            f"{name}: zip entry '{e.name}' is compressed (zip method {e.method}); webrwkv reads tensors in place, "
            "by byte range, so they must be stored uncompressed, as torch.save writes them (was the file re-zipped?): "
            f"re-save it with {RESAVE}, or unzip it and zip it again with `zip -0`")


def _next_starts(entries: list[Entry], cd_off: int) -> dict[str, int]:
    """Where the next member (or the directory) starts after each entry: its data cannot reach past that."""
    order = sorted(entries, key=lambda e: e.header_offset)
    return {e.name: (order[i + 1].header_offset if i + 1 < len(order) else cd_off) for i, e in enumerate(order)}


def _header_spans(entries: list[Entry]) -> list[tuple[int, int]]:
    return [(e.header_offset, 30 + len(e.raw_name)) for e in entries]


def _read_starts(source: Any, entries: list[Entry], ends: dict[str, int], name: str) -> dict[str, int]:
    """Read the local headers of `entries` (one batch of small ranges) and return where each one's data starts."""
    return _starts(entries, _read_all(source, _header_spans(entries)), ends, name)


def _read_all(source: Any, spans: list[tuple[int, int]]) -> list[bytes]:
    return source.read_ranges(spans) if hasattr(source, "read_ranges") else [source.read(o, n) for o, n in spans]


def _starts(entries: list[Entry], raws: list[bytes], ends: dict[str, int], name: str) -> dict[str, int]:
    out = {}
    for e, raw in zip(entries, raws):
        if raw[:4] != LOCAL or raw[30:] != e.raw_name:
            raise ModelFormatError(f"{name}: the zip's local header of '{e.name}' (at byte {e.header_offset}) is "
                                   "missing or names another file: the file is damaged; download it again")
        n, m = struct.unpack_from("<HH", raw, 26)
        out[e.name] = _placed(e, e.header_offset + 30 + n + m, ends[e.name], name)
    return out


def _read_members(source: Any, entries: list[Entry], ends: dict[str, int], name: str) -> dict[str, bytes]:
    """The contents of a few small members. Their local headers and their data (where the directory says it
    must be) are read in one batch, so a source that fetches by round trips needs one; a member whose header
    says otherwise is read again from there."""
    guess = {}
    for e in entries:
        try:
            guess[e.name] = _predict(e, ends[e.name], name)
        except ModelFormatError:
            guess[e.name] = e.header_offset + 30 + len(e.raw_name)
    hdr = _header_spans(entries)
    raws = _read_all(source, hdr + [(guess[e.name], e.size) for e in entries])
    starts = _starts(entries, raws[: len(hdr)], ends, name)
    return {e.name: (d if guess[e.name] == starts[e.name] else source.read(starts[e.name], e.size))
            for e, d in zip(entries, raws[len(hdr):])}


def _predict(e: Entry, end: int, name: str) -> int:
    """Where an entry's data starts, from the directory alone: it ends where the next member starts, less its
    data descriptor (flag bit 3: signature, CRC and two sizes of 4 bytes, or of 8 with zip64)."""
    desc = (24 if e.zip64 else 16) if e.flags & 8 else 0
    return _placed(e, end - desc - e.comp_size, end, name)


def _placed(e: Entry, start: int, end: int, name: str) -> int:
    if start < e.header_offset + 30 + len(e.raw_name) or start + e.comp_size > end:
        raise ModelFormatError(f"{name}: zip entry '{e.name}' does not fit between its header and the next member: "
                               "the file is damaged; download it again")
    return start


def _state_dict(obj: Any, name: str) -> dict[str, TensorDesc]:
    """The {name: tensor} of the pickled object: a dict of tensors, or such a dict under 'state_dict'."""
    if isinstance(obj, dict) and not any(isinstance(v, TensorDesc) for v in obj.values()):
        inner = obj.get("state_dict")
        obj = inner if isinstance(inner, dict) else obj
    if isinstance(obj, TensorDesc):
        raise ModelFormatError(f"{name} holds a single tensor, not a state dict: save the model's "
                               "{name: tensor} dict, e.g. torch.save(model.state_dict(), 'model.pth')")
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{name} holds a {type(obj).__name__}, not a state dict of tensors: save the model's "
                               "{name: tensor} dict, e.g. torch.save(model.state_dict(), 'model.pth')")
    out = {k: v for k, v in obj.items() if isinstance(v, TensorDesc)}
    if not out:
        keys = ", ".join(sorted(str(k) for k in obj)[:5]) or "none"
        raise ModelFormatError(f"{name} holds a dict without tensors (keys: {keys}), not a model's state dict: "
                               "save the model's weights, e.g. torch.save(model.state_dict(), 'model.pth')")
    bad = [k for k in out if not isinstance(k, str)]
    if bad:
        raise ModelFormatError(f"{name}: a tensor in the state dict has a {type(bad[0]).__name__} key, not a name")
    return out


def _info(tname: str, t: TensorDesc, data_start: int, name: str) -> TensorInfo:
    """The tensor's byte range in the file, if it is one contiguous run of its storage."""
    s, numel = t.storage, 1
    for d in t.shape:
        numel *= d
    want, contiguous = 1, True
    for d, st in zip(reversed(t.shape), reversed(t.stride)):
        contiguous = contiguous and (d == 1 or st == want)
        want *= d
    if numel and not contiguous:
        raise ModelFormatError(
            f"{name}: tensor '{tname}' is a non-contiguous view of its storage (shape {list(t.shape)}, strides "
            f"{list(t.stride)}), which cannot be read as one byte range: re-save the checkpoint with contiguous "
            "tensors: torch.save({k: v.contiguous() for k, v in state_dict.items()}, 'model.pth')")
    if t.offset + numel > s.numel:
        raise ModelFormatError(f"{name}: tensor '{tname}' ({numel} values from {t.offset}) runs past the end of its "
                               f"storage ({s.numel} values): the file is damaged")
    start = data_start + t.offset * s.esize
    return TensorInfo(tname, s.dtype, tuple(t.shape), start, start + numel * s.esize)


class CheckedSource(ByteSource):
    """A remote source (HTTP) for a model that may be a .pth: its index is read with the storages placed
    from the zip directory, so no request per tensor; each placed local header is then compared when a
    read of that storage's tensors passes by, in the same request (a few bytes before the data)."""

    def __init__(self, src: Any) -> None:
        self.src, self.name, self.size = src, getattr(src, "name", ""), src.size
        self.identity = getattr(src, "identity", "")
        self.pending: list[tuple[int, bytes, list[tuple[int, int]]]] = []  # (offset, bytes, tensor spans)

    def expect(self, index: CheckpointIndex) -> CheckpointIndex:
        """Take over the index's checks; they are verified by the reads that use them."""
        self.pending = [(o, e, [(index.tensors[n].start, index.tensors[n].end) for n in names])
                        for o, e, names in index.checks]
        return index

    def read(self, offset: int, length: int) -> bytes:
        return self.read_ranges([(offset, length)])[0]

    def read_ranges(self, ranges: Any) -> list[bytes]:
        ranges = list(ranges)
        due = [c for c in self.pending if any(o < b and a < o + n for o, n in ranges for a, b in c[2])]
        got = _read_all(self.src, ranges + [(o, len(e)) for o, e, _ in due])
        for (o, e, _), raw in zip(due, got[len(ranges):]):
            if raw != e:
                raise ModelFormatError(
                    f"{self.name}: the zip header at byte {o} is not where the checkpoint's directory puts it "
                    "(a .pth not written by torch.save?): download the file and load it from disk")
        if due:
            self.pending = [c for c in self.pending if not any(c is d for d in due)]
        return got[: len(ranges)]

    def close(self) -> None:
        self.src.close()
