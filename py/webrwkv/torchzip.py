"""The zip directory of a torch.save file (zip64 too), read from ranged reads without the zipfile module."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .errors import ModelFormatError

# Why not zipfile: it wants a seekable file object, reads the end of the file in small seeks and each
# member's local header as it opens it. Here every read is an (offset, length) range on a byte source
# (a local file, HTTP Range requests, bytes the browser fetched), batched so a remote source needs few.

EOCD, EOCD64, LOCATOR64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
CENTRAL, LOCAL = b"PK\x01\x02", b"PK\x03\x04"
TAIL = 256 << 10  # first read from the end: the end records and, for most models, the whole directory
MAX_DIRECTORY = 64 << 20  # ~500,000 entries; a real checkpoint's directory is well under 1 MB
U32, U16 = 0xFFFFFFFF, 0xFFFF


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


def _find_end(tail: bytes, name: str) -> int:
    """Where the end-of-central-directory record starts in the file's last bytes."""
    pos = len(tail) - 22
    while pos >= 0:
        pos = tail.rfind(EOCD, 0, pos + 4)
        if pos < 0:
            break
        if struct.unpack_from("<H", tail, pos + 20)[0] == len(tail) - pos - 22:  # comment runs to the end
            return pos
        pos -= 1
    raise ModelFormatError(
        f"{name}: no zip end record in its last {len(tail)} bytes: the file is truncated (an interrupted "
        "download?) or is not a torch.save checkpoint; download it again")


def tail_offset(tail: bytes, name: str = "the model file") -> int:
    """Where the file's last bytes `tail` start, from its end records alone (for a server that hides the
    file's size): the directory, or the zip64 end record, sits right before the end record."""
    pos = _find_end(tail, name)
    if pos >= 20 and tail[pos - 20: pos - 16] == LOCATOR64:
        at = struct.unpack_from("<Q", tail, pos - 12)[0] - (pos - 76)
    else:
        cd_size, cd_off = struct.unpack_from("<II", tail, pos + 12)
        at = cd_off + cd_size - pos
    if at < 0:
        raise _damaged(name, "its zip end records do not fit the file")
    _end_records(tail, at, name)
    return at


def _end_records(tail: bytes, tail_at: int, name: str) -> tuple[int, int, int, int]:
    """(directory offset, directory size, entry count, where the directory must end) from the file's
    last bytes `tail`, which start at file offset `tail_at`."""
    pos = _find_end(tail, name)
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
