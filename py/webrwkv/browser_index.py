"""What the browser fetched of a remote model before planning its load: the first bytes, or for a .pth
several pieces (its start, zip tail and pickle), and which ranges are still needed to read the index."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

from .checkpoints import read_model_header, sniff
from .errors import SourceError
from .sources import ByteSource
from .torchzip import TAIL, tail_offset

PIECES = b"webrwkv-pieces\x00\x01"  # several fetched ranges in one blob (see web/loader.js fetchIndex)
AT_END = (1 << 64) - 1  # a piece fetched by a suffix range: it ends where the file does
MERGE_GAP = 64 << 10


class NeedBytes(SourceError):
    """Reading the index needs file ranges JS has not fetched yet: (offset, length); offset -1 for the
    file's last `length` bytes when its size is unknown."""

    def __init__(self, ranges: list[tuple[int, int]], name: str) -> None:
        super().__init__(f"{name}: reading the model's index needs more of the file than was fetched "
                         f"({len(ranges)} ranges): load the model again")
        self.ranges = ranges


class PrefixSource(ByteSource):
    """What JS fetched of a remote file: its first bytes, or several pieces packed by loader.js (a .pth's
    start, tail and pickle). Enough for the index; a read of anything else raises NeedBytes."""

    def __init__(self, prefix: bytes, size: int, name: str) -> None:
        self.name = name
        self.pieces = _unpack(prefix) if prefix.startswith(PIECES) else [(0, prefix)]
        first = next((p for o, p in self.pieces if o == 0), b"")
        tail = next((p for o, p in self.pieces if o == AT_END), None)
        if size < 0 and sniff(first[:16]) == "zip":  # size hidden by CORS: the zip's end records say it
            if tail is None:
                raise NeedBytes([(-1, TAIL)], name)
            size = tail_offset(tail, name) + len(tail)
        elif size < 0 and len(first) >= 8:  # the safetensors header says where the data ends
            size = len(first)
            with contextlib.suppress(Exception):
                n = int.from_bytes(first[:8], "little")
                hdr = json.loads(first[8:8 + n])
                size = 8 + n + max([v["data_offsets"][1] for k, v in hdr.items() if k != "__metadata__"] + [0])
        self.size = max(size, 0)
        self.pieces = sorted((self.size - len(p) if o == AT_END else o, p) for o, p in self.pieces)

    def read(self, offset: int, length: int) -> bytes:
        return self.read_ranges([(offset, length)])[0]

    def read_ranges(self, ranges: Any) -> list[bytes]:
        out, missing = [], []
        for o, n in ranges:
            got = self._covered(o, n)
            out.append(got if got is not None else b"")
            if got is None:
                missing.append((o, n))
        if missing:
            raise NeedBytes(missing, self.name)
        return out

    def _covered(self, offset: int, length: int) -> bytes | None:
        """Bytes [offset, offset + length) from the pieces (which may overlap or adjoin), or None."""
        parts, pos, end = [], offset, offset + length
        for o, p in self.pieces:
            if pos >= end:
                break
            if o <= pos < o + len(p):
                take = p[pos - o: min(end, o + len(p)) - o]
                parts.append(take)
                pos += len(take)
        return b"".join(parts) if pos >= end else None


def _unpack(blob: bytes) -> list[tuple[int, bytes]]:
    """PIECES, then u32 count, then per piece u64 offset (AT_END for a suffix), u64 length, the bytes."""
    out, pos = [], len(PIECES) + 4
    for _ in range(int.from_bytes(blob[len(PIECES): pos], "little")):
        o, n = struct.unpack_from("<QQ", blob, pos)
        out.append((o, blob[pos + 16: pos + 16 + n]))
        pos += 16 + n
    return out


def index_needs(blob: Any, size: int, name: str = "the model") -> list[list[int]]:
    """The file ranges [start, end) JS must fetch, beyond `blob`, before the model's index can be read
    ([] when it can; start < 0 asks for the last -start bytes). Errors in what was read are raised here,
    before any GPU buffer exists."""
    data = blob.to_bytes() if hasattr(blob, "to_bytes") else bytes(blob)
    try:
        read_model_header(PrefixSource(data, int(size), str(name)), verify=False)
    except NeedBytes as e:
        out: list[list[int]] = []
        for o, n in sorted(e.ranges):  # neighbours share a request: a few KB more beats a round trip
            if o < 0:
                out.append([-n, 0])
            elif out and out[-1][0] >= 0 and o - out[-1][1] <= MERGE_GAP:
                out[-1][1] = max(out[-1][1], o + n)
            else:
                out.append([o, o + n])
        return out
    return []
