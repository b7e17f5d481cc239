"""The browser's streamed load of a .pth, done as web/loader.js and worker.js do it (the first 4 KB, then
the ranges browser_index.index_needs asks for, packed into one blob): the same runtime, bit for bit, as the
native upload of its safetensors twin, in a few small requests; and a misplaced zip header is caught."""

from __future__ import annotations

import asyncio
import struct
import zipfile

import numpy as np
import pytest
from gpu_util import GOLDEN, device

from webrwkv.browser_index import AT_END, PIECES, index_needs
from webrwkv.browser_loader import StreamingLoad
from webrwkv.errors import ModelFormatError
from webrwkv.models import load_weights
from webrwkv.runtime import Runtime

PREFIX = 4096  # web/loader.js PREFIX


def pack(pieces: list) -> bytes:
    """web/loader.js packPieces."""
    out = PIECES + struct.pack("<I", len(pieces))
    for o, b in pieces:
        out += struct.pack("<QQ", AT_END if o < 0 else o, len(b)) + b
    return out


def fetch_index(data: bytes, size: int) -> tuple[bytes, list]:
    """web/loader.js fetchIndex: rounds of index_needs; returns the blob and the ranges fetched per round."""
    pieces, rounds = [(0, data[:PREFIX])], []
    for _ in range(8):
        blob = pack(pieces)
        want = index_needs(blob, size, "m.pth")
        if not want:
            return blob, rounds
        rounds.append(want)
        pieces += [(-1, data[s:]) if s < 0 else (s, data[s:e]) for s, e in want]
    raise AssertionError("too many rounds")


def stream(data: bytes, size: int | None = None):
    blob, rounds = fetch_index(data, len(data) if size is None else size)
    ld = StreamingLoad(device(), blob, len(data) if size is None else size, "http://host/m.pth", None)
    for a0, a1, buf, off, tag in ld.writes:
        assert a0 % 4 == 0 and a1 % 4 == 0 and off % 4 == 0 and a0 >= (ld.data_start & ~3)
        staged = buf is None
        if staged:
            buf = ld.dev.buffer(a1 - a0, label="staging")
        chunk = data[a0:a1]
        ld.dev.write(buf, off, chunk + b"\0" * (a1 - a0 - len(chunk)))
        ld.write_done(tag, buf if staged else None)
    return ld, rounds


@pytest.mark.parametrize("pth,twin", [("v7-fp16.pth", "v7-converted.st"), ("v6-bf16.pth", "v6-bf16.st"),
                                      ("v5.pth", "v5.st"), ("v4-fp16.pth", "v4-converted.st")])
def test_streamed_pth_equals_native_upload_of_its_twin(pth, twin):
    data = (GOLDEN / pth).read_bytes()
    ld, rounds = stream(data)
    assert len(rounds) <= 2 and all(len(r) <= 2 for r in rounds)  # the tail, then the pickle (+ byteorder)
    assert sum(e - s for r in rounds for s, e in r) < 300_000  # the tail read is at most 256 KB
    assert ld.checks  # every storage's local header is checked on the streamed bytes
    rt, _, info = asyncio.run(ld.finish())
    info2, w = load_weights(GOLDEN / twin)
    native = Runtime(ld.dev, info2, w, tuning=rt.k.tuning)
    ids = [0, 17, 255, 3, 42, 7]
    rt.push(0, ids)
    native.push(0, ids)
    got, want = rt.run(all_logits=True)[0], native.run(all_logits=True)[0]
    assert got.shape == (len(ids), 256) and np.array_equal(got, want)


def test_size_hidden_by_cors_comes_from_the_zip_end_records():
    data = (GOLDEN / "v7-fp16.pth").read_bytes()
    blob, rounds = fetch_index(data, -1)
    assert rounds[0] == [[-256 << 10, 0]]  # a suffix range first: the size is unknown
    ld = StreamingLoad(device(), blob, -1, "http://host/m.pth", None)
    assert ld.size == len(data)
    ld.cancel()


def test_a_zip_header_not_where_the_directory_says_fails_the_load(tmp_path):
    """The browser predicts where each storage starts; if the file disagrees the load fails, never
    silently with misplaced weights. (Natively the headers are read, and this file is refused at once.)"""
    data = bytearray((GOLDEN / "v7-fp16.pth").read_bytes())
    z = zipfile.ZipFile(GOLDEN / "v7-fp16.pth")
    info = z.getinfo("v7-fp16/data/5")
    data[info.header_offset + 30 + len("v7-fp16/data/")] = ord("9")  # the local header names data/9
    ld, _ = stream(bytes(data))
    with pytest.raises(ModelFormatError, match="zip header at byte .* not where"):
        asyncio.run(ld.finish())
    from webrwkv.checkpoints import read_checkpoint
    from webrwkv.sources import BytesSource

    with pytest.raises(ModelFormatError, match="names another file"):
        read_checkpoint(BytesSource(bytes(data)))


def test_unaligned_tensors_are_refused_by_the_streamed_load(tmp_path):
    """Python's zipfile puts data right after each header, at any byte: natively fine, but the GPU
    conversion reads whole elements, so the streamed load says to convert instead of reading skewed data."""
    with zipfile.ZipFile(GOLDEN / "v7-fp16.pth") as zin, zipfile.ZipFile(tmp_path / "u.pth", "w") as zout:
        for i in zin.infolist():
            zout.writestr(i.filename, zin.read(i))
    data = (tmp_path / "u.pth").read_bytes()
    from webrwkv.checkpoints import read_checkpoint
    from webrwkv.sources import BytesSource

    assert any(t.start % 2 for t in read_checkpoint(BytesSource(data)).tensors.values())  # fixed layout: it is
    with pytest.raises(ModelFormatError, match="boundary.*webrwkv convert"):
        stream(data)
