"""A restricted unpickler for torch.save's data.pkl: it builds tensor descriptors (storage, offset, shape,
strides) and plain values, and refuses every other import or call, so nothing from the file ever runs."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .errors import ModelFormatError

# Why not pickle.Unpickler with a restricted find_class: every opcode it does not forbid still runs
# (REDUCE calls, NEWOBJ and BUILD instantiate and set state on, whatever find_class returns), so safety
# would rest on the stand-ins. Here each opcode is interpreted by hand and only the few values torch.save
# writes for a state dict of tensors can exist. Values are never repr'd or compared deeply, so a hostile
# pickle costs time and memory linear in its size.

MAX_PICKLE = 64 << 20  # a real checkpoint's data.pkl is ~100 bytes per tensor
_STRUCTS = {f: struct.Struct(f) for f in ("<B", "<H", "<i", "<I", "<Q", ">d")}

# torch storage class -> (safetensors dtype name, bytes per element)
STORAGES = {
    "FloatStorage": ("F32", 4), "HalfStorage": ("F16", 2), "BFloat16Storage": ("BF16", 2),
    "DoubleStorage": ("F64", 8), "LongStorage": ("I64", 8), "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2), "CharStorage": ("I8", 1), "ByteStorage": ("U8", 1), "BoolStorage": ("BOOL", 1),
}


def _damaged(name: str, what: str) -> ModelFormatError:
    return ModelFormatError(f"{name}: {what}: the file is damaged or truncated (an interrupted download?); "
                            "download it again")


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
        st = _STRUCTS[fmt]
        if self.pos + st.size > len(self.data):
            raise _damaged(self.name, "its pickle (data.pkl) ends in the middle of a value")
        v = st.unpack_from(self.data, self.pos)[0]
        self.pos += st.size
        return v

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
        ops, data, end = _OPS, self.data, len(self.data)
        while True:
            at = self.pos
            if at >= end:
                raise _damaged(self.name, "its pickle (data.pkl) ends without its STOP opcode")
            op = data[at]
            self.pos = at + 1
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
