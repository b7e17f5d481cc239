"""The two parts of a torch.save file, read without torch: the zip directory (zip64 too) from ranged
reads, and a restricted unpickler that turns `data.pkl` into tensor descriptors and runs nothing."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .errors import ModelFormatError

# Why not zipfile / pickle: zipfile wants a seekable file object and reads local headers one by one,
# pickle.Unpickler imports and calls whatever the file names. Here every read is a (offset, length)
# range on a byte source (a local file, HTTP Range requests, bytes fetched by the browser), and the
# unpickler knows only the few objects torch.save writes for a state dict of tensors.

EOCD, EOCD64, LOCATOR64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
CENTRAL, LOCAL = b"PK\x01\x02", b"PK\x03\x04"
MAX_COMMENT = 0xFFFF
TAIL = 256 << 10  # first read from the end: the end records and, for most models, the whole directory
MAX_DIRECTORY = 64 << 20  # ~500,000 entries; a real checkpoint's directory is well under 1 MB
MAX_PICKLE = 64 << 20  # a real checkpoint's data.pkl is ~100 bytes per tensor
U32, U16 = 0xFFFFFFFF, 0xFFFF

# torch storage class -> (safetensors dtype name, bytes per element)
STORAGES = {
    "FloatStorage": ("F32", 4), "HalfStorage": ("F16", 2), "BFloat16Storage": ("BF16", 2),
    "DoubleStorage": ("F64", 8), "LongStorage": ("I64", 8), "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2), "CharStorage": ("I8", 1), "ByteStorage": ("U8", 1), "BoolStorage": ("BOOL", 1),
}


@dataclass(frozen=True)
class Entry:
    """One member of the zip's central directory."""

    name: str
    raw_name: bytes
    flags: int
    method: int
    comp_size: int
    size: int
    header_offset: int
    zip64: bool  # the directory needed zip64 fields for it (its data descriptor, if any, is 24 bytes)


def _damaged(name: str, what: str) -> ModelFormatError:
    return ModelFormatError(f"{name}: {what}: the file is damaged or truncated (an interrupted download?); "
                            "download it again")


def _end_records(tail: bytes, tail_at: int, name: str) -> tuple[int, int, int, int]:
    """(directory offset, directory size, entry count, where the directory must end) from the file's
    last bytes `tail`, which start at file offset `tail_at`."""
    pos = len(tail) - 22
    while pos >= 0:
        pos = tail.rfind(EOCD, 0, pos + 4)
        if pos < 0:
            break
        if struct.unpack_from("<H", tail, pos + 20)[0] == len(tail) - pos - 22:  # comment runs to the end
            break
        pos -= 1
    if pos < 0:
        raise ModelFormatError(
            f"{name}: no zip end record in its last {len(tail)} bytes: the file is truncated (an interrupted "
            "download?) or is not a torch.save checkpoint; download it again")
    disk, cd_disk, _, count, cd_size, cd_off = struct.unpack_from("<HHHHII", tail, pos + 4)
    end = tail_at + pos
    if pos >= 20 and tail[pos - 20: pos - 16] == LOCATOR64:
        z64 = struct.unpack_from("<Q", tail, pos - 12)[0] - tail_at
        if not 0 <= z64 <= pos - 76 or tail[z64: z64 + 4] != EOCD64:
            raise _damaged(name, "its zip64 end record is missing or misplaced")
        disk, cd_disk, _, count, cd_size, cd_off = struct.unpack_from("<IIQQQQ", tail, z64 + 16)
        end = tail_at + z64
    elif U32 in (cd_size, cd_off) or count == U16:
        raise _damaged(name, "its zip end record needs a zip64 record that is not there")
    if disk or cd_disk:
        raise ModelFormatError(f"{name} is one part of a multi-part zip archive: join the parts first")
    if cd_off + cd_size > end:
        raise _damaged(name, f"its zip directory ({cd_size} bytes at {cd_off}) runs past where it must end ({end})")
    if cd_size > MAX_DIRECTORY or count > cd_size // 46:
        raise _damaged(name, f"its zip directory claims {count} entries in {cd_size} bytes")
    return cd_off, cd_size, count, end


def read_directory(source: Any) -> tuple[list[Entry], int]:
    """The central directory of a zip file on `source` (entries in directory order) and its offset."""
    name, size = str(getattr(source, "name", "") or "the model file"), int(source.size)
    at = max(0, size - TAIL)
    tail = source.read(at, size - at)
    cd_off, cd_size, count, _ = _end_records(tail, at, name)
    cd = tail[cd_off - at: cd_off - at + cd_size] if cd_off >= at else source.read(cd_off, cd_size)
    entries, pos, seen = [], 0, set()
    for _ in range(count):
        if cd[pos: pos + 4] != CENTRAL or pos + 46 > len(cd):
            raise _damaged(name, f"zip directory entry {len(entries)} is malformed")
        flags, method = struct.unpack_from("<HH", cd, pos + 8)
        comp, usize, n, m, k = struct.unpack_from("<IIHHH", cd, pos + 20)
        disk, lho = struct.unpack_from("<H", cd, pos + 34)[0], struct.unpack_from("<I", cd, pos + 42)[0]
        raw_name, extra = cd[pos + 46: pos + 46 + n], cd[pos + 46 + n: pos + 46 + n + m]
        pos += 46 + n + m + k
        if pos > len(cd):
            raise _damaged(name, f"zip directory entry {len(entries)} runs past the directory")
        wide = U32 in (comp, usize, lho) or disk == U16
        if wide:
            usize, comp, lho = _zip64_fields(extra, usize, comp, lho, name)
        ename = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        if ename in seen:
            raise _damaged(name, f"the zip holds '{ename}' twice")
        seen.add(ename)
        if lho + 30 + n > cd_off:
            raise _damaged(name, f"zip entry '{ename}' starts past the directory")
        entries.append(Entry(ename, raw_name, flags, method, comp, usize, lho, wide))
    return entries, cd_off


def _zip64_fields(extra: bytes, usize: int, comp: int, lho: int, name: str) -> tuple[int, int, int]:
    """Replace the 0xFFFFFFFF fields with the zip64 extra field's values (they come in this order)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            vals = list(struct.unpack_from(f"<{min(n, 24) // 8}Q", extra, pos + 4))
            out = []
            for v in (usize, comp, lho):
                if v == U32:
                    if not vals:
                        break
                    v = vals.pop(0)
                out.append(v)
            if len(out) == 3:
                return out[0], out[1], out[2]
            break
        pos += 4 + n
    raise _damaged(name, "a zip entry needs zip64 sizes that its directory does not hold")


# ---- the restricted unpickler ------------------------------------------------------------------

@dataclass(frozen=True)
class Storage:
    """A persistent_id record: torch.save's pointer to the zip member data/<key>."""

    key: str
    dtype: str
    esize: int
    numel: int


@dataclass(frozen=True)
class TensorDesc:
    """What torch._utils._rebuild_tensor_v2 would build, as plain numbers."""

    storage: Storage
    offset: int
    shape: tuple
    stride: tuple


class _Global:
    """A name the pickle imported; only the allowed ones ever become one."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _OrderedDict(dict):
    """collections.OrderedDict as torch.save writes it (a dict; a state dict's `_metadata` is dropped)."""


_MARK = object()
_REBUILD = ("torch._utils", "_rebuild_tensor_v2")
_ORDERED = ("collections", "OrderedDict")
NOT_RUN = "webrwkv never runs code from a model file, so it will not load this one"


def _refuse(name: str, what: str, at: int) -> ModelFormatError:
    return ModelFormatError(
        f"{name}: its pickle (data.pkl) {what} at byte {at}, which is not part of a state dict of tensors; "
        f"{NOT_RUN}. If you trust the file, re-save it as a plain state dict: "
        "torch.save({k: v.contiguous() for k, v in state_dict.items()}, 'model.pth')")


def _short(v: Any) -> str:
    """A value named by its type only (never repr: it may be nested a million deep)."""
    if isinstance(v, _Global):
        return f"{v.module}.{v.name}"
    return type(v).__name__


class _Unpickler:
    """Pickle protocols 2-5, limited to what torch.save writes for a dict of tensors."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name, self.pos = data, name, 0
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _damaged(self.name, "its pickle (data.pkl) ends in the middle of a value")
        b = self.data[self.pos: self.pos + n]
        self.pos += n
        return b

    def num(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def pop_mark(self) -> list:
        if not self.marks:
            raise _damaged(self.name, "its pickle (data.pkl) closes a MARK it never opened")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise _damaged(self.name, "its pickle (data.pkl) pops from an empty stack")
        return self.stack.pop()

    def text(self, n: int) -> str:
        at = self.pos
        try:
            return self.take(n).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise _damaged(self.name, f"its pickle (data.pkl) holds a string that is not UTF-8 at byte {at}") from None

    def load(self) -> Any:
        ops = _OPS
        while True:
            at = self.pos
            op = self.take(1)[0]
            fn = ops.get(op)
            if fn is None:
                raise _refuse(self.name, f"uses pickle opcode 0x{op:02x}{_OPNAMES.get(op, '')}", at)
            if fn(self, at):
                if len(self.stack) != 1 or self.marks:
                    raise _damaged(self.name, "its pickle (data.pkl) ends with a malformed stack")
                return self.stack[0]

    # opcode handlers: return True on STOP
    def o_global(self, at: int, module: str | None = None, name: str | None = None) -> None:
        if module is None:
            module, name = self._line(), self._line()
        if (module, name) not in (_REBUILD, _ORDERED) and not (module == "torch" and name in STORAGES):
            raise _refuse(self.name, f"imports {module}.{name}", at)
        self.stack.append(_Global(module, name))

    def _line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + 256)
        if end < 0:
            raise _damaged(self.name, "its pickle (data.pkl) has an unterminated GLOBAL name")
        s = self.text(end - self.pos)
        self.pos += 1
        return s

    def o_reduce(self, at: int) -> None:
        args, fn = self.pop(), self.pop()
        if not isinstance(fn, _Global) or not isinstance(args, tuple):
            raise _refuse(self.name, f"calls a {_short(fn)}", at)
        if (fn.module, fn.name) == _ORDERED:
            if args:
                raise _refuse(self.name, "builds an OrderedDict from arguments", at)
            self.stack.append(_OrderedDict())
        elif (fn.module, fn.name) == _REBUILD:
            self.stack.append(self._tensor(args, at))
        else:
            raise _refuse(self.name, f"calls {fn.module}.{fn.name}", at)

    def _tensor(self, args: tuple, at: int) -> TensorDesc:
        ok = 6 <= len(args) <= 7 and isinstance(args[0], Storage) and _int(args[1]) and args[1] >= 0
        ok = ok and _ints(args[2]) and _ints(args[3]) and len(args[2]) == len(args[3]) and len(args[2]) <= 8
        ok = ok and isinstance(args[4], bool) and isinstance(args[5], dict) and not args[5]
        if not ok or (len(args) == 7 and not (args[6] is None or isinstance(args[6], dict))):
            raise _refuse(self.name, "rebuilds a tensor from arguments torch.save does not write", at)
        return TensorDesc(args[0], args[1], tuple(args[2]), tuple(args[3]))

    def o_persid(self, at: int) -> None:
        pid = self.pop()
        ok = isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[0], str) and pid[0] == "storage"
        ok = ok and isinstance(pid[1], _Global) and pid[1].module == "torch" and pid[1].name in STORAGES
        ok = ok and isinstance(pid[2], str) and isinstance(pid[3], str) and _int(pid[4]) and pid[4] >= 0
        if not ok:
            raise _refuse(self.name, "refers to an outside object that is not a tensor storage", at)
        dtype, esize = STORAGES[pid[1].name]
        self.stack.append(Storage(pid[2], dtype, esize, pid[4]))

    def o_build(self, at: int) -> None:
        state, obj = self.pop(), self.pop()
        if not isinstance(obj, _OrderedDict) or not isinstance(state, dict):
            raise _refuse(self.name, f"sets the state of a {_short(obj)}", at)
        self.stack.append(obj)

    def o_setitems(self, at: int, items: list | None = None, d: Any = None) -> None:
        items = self.pop_mark() if items is None else items
        d = self.pop() if d is None else d
        if not isinstance(d, dict) or len(items) % 2:
            raise _refuse(self.name, f"sets items on a {_short(d)}", at)
        for k, v in zip(items[::2], items[1::2]):
            if not isinstance(k, (str, int, bool, float, type(None))):
                raise _refuse(self.name, f"uses a {_short(k)} as a dict key", at)
            d[k] = v
        self.stack.append(d)

    def o_appends(self, at: int, items: list | None = None) -> None:
        items = self.pop_mark() if items is None else items
        lst = self.pop()
        if not isinstance(lst, list):
            raise _refuse(self.name, f"appends to a {_short(lst)}", at)
        lst.extend(items)
        self.stack.append(lst)

    def o_put(self, at: int, i: int) -> None:
        if not self.stack:
            raise _damaged(self.name, "its pickle (data.pkl) memoizes from an empty stack")
        self.memo[i] = self.stack[-1]

    def o_get(self, at: int, i: int) -> None:
        if i not in self.memo:
            raise _damaged(self.name, f"its pickle (data.pkl) refers to memo {i}, which it never stored")
        self.stack.append(self.memo[i])


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(v: Any) -> bool:
    return isinstance(v, tuple) and all(_int(d) and d >= 0 for d in v)


def _stop(u: _Unpickler, at: int) -> bool:
    return True


def _push(value_of: Any) -> Any:
    return lambda u, at: u.stack.append(value_of(u))


def _long1(u: _Unpickler) -> int:
    n = u.take(1)[0]
    if n > 8:
        raise _refuse(u.name, f"holds a {n}-byte integer", u.pos - 2)
    return int.from_bytes(u.take(n), "little", signed=True)


def _tuple(n: int) -> Any:
    def op(u: _Unpickler, at: int) -> None:
        items = [u.pop() for _ in range(n)][::-1]
        u.stack.append(tuple(items))
    return op


_OPS: dict[int, Any] = {
    0x80: lambda u, at: (u.take(1), None)[1],  # PROTO
    0x95: lambda u, at: (u.take(8), None)[1],  # FRAME: framing only
    ord("."): _stop,
    ord("("): lambda u, at: u.marks.append(len(u.stack)),
    ord("0"): lambda u, at: (u.pop(), None)[1],
    ord("1"): lambda u, at: (u.pop_mark(), None)[1],
    ord("2"): lambda u, at: u.stack.append(u.stack[-1]) if u.stack else u.pop(),
    ord("N"): _push(lambda u: None),
    0x88: _push(lambda u: True),
    0x89: _push(lambda u: False),
    ord("K"): _push(lambda u: u.num("<B")),
    ord("M"): _push(lambda u: u.num("<H")),
    ord("J"): _push(lambda u: u.num("<i")),
    0x8A: _push(_long1),
    ord("G"): _push(lambda u: u.num(">d")),
    ord("X"): _push(lambda u: u.text(u.num("<I"))),
    0x8C: _push(lambda u: u.text(u.num("<B"))),
    0x8D: _push(lambda u: u.text(u.num("<Q"))),
    ord("C"): _push(lambda u: u.take(u.num("<B"))),
    ord("B"): _push(lambda u: u.take(u.num("<I"))),
    ord(")"): _push(lambda u: ()),
    ord("t"): lambda u, at: u.stack.append(tuple(u.pop_mark())),
    0x85: _tuple(1), 0x86: _tuple(2), 0x87: _tuple(3),
    ord("]"): _push(lambda u: []),
    ord("l"): lambda u, at: u.stack.append(u.pop_mark()),
    ord("a"): lambda u, at: u.o_appends(at, [u.pop()]),
    ord("e"): lambda u, at: u.o_appends(at),
    ord("}"): _push(lambda u: {}),
    ord("d"): lambda u, at: u.o_setitems(at, u.pop_mark(), {}),
    ord("s"): lambda u, at: u.o_setitems(at, _last_two(u)),
    ord("u"): lambda u, at: u.o_setitems(at),
    ord("q"): lambda u, at: u.o_put(at, u.num("<B")),
    ord("r"): lambda u, at: u.o_put(at, u.num("<I")),
    0x94: lambda u, at: u.o_put(at, len(u.memo)),
    ord("h"): lambda u, at: u.o_get(at, u.num("<B")),
    ord("j"): lambda u, at: u.o_get(at, u.num("<I")),
    ord("c"): lambda u, at: u.o_global(at),
    0x93: lambda u, at: _stack_global(u, at),
    ord("R"): lambda u, at: u.o_reduce(at),
    ord("b"): lambda u, at: u.o_build(at),
    ord("Q"): lambda u, at: u.o_persid(at),
}
_OPNAMES = {ord("i"): " (INST)", ord("o"): " (OBJ)", 0x81: " (NEWOBJ)", 0x92: " (NEWOBJ_EX)", ord("P"): " (PERSID)",
            0x82: " (EXT1)", 0x83: " (EXT2)", 0x84: " (EXT4)", 0x8B: " (LONG4)", ord("I"): " (INT)",
            ord("S"): " (STRING)", ord("V"): " (UNICODE)", ord("p"): " (PUT)", ord("g"): " (GET)"}


def _last_two(u: _Unpickler) -> list:
    v = u.pop()
    return [u.pop(), v]


def _stack_global(u: _Unpickler, at: int) -> None:
    name, module = u.pop(), u.pop()
    if not isinstance(module, str) or not isinstance(name, str):
        raise _refuse(u.name, "imports a name that is not a string", at)
    u.o_global(at, module, name)


def unpickle(data: bytes, name: str = "the model file") -> Any:
    """The object in a torch.save pickle: dicts, lists, tuples, numbers, strings and TensorDesc, nothing else."""
    return _Unpickler(data, name).load()
