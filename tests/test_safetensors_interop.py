"""The project's safetensors reader and writer against the official `safetensors` library, both ways:
golden files and fuzz-made valid files index the same through both readers; files the project writes
(through the library) load in it; and writing never follows a planted name nor leaves a partial file."""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors
from safetensors import safe_open

from webrwkv.convert import convert_main
from webrwkv.errors import WebRwkvError
from webrwkv.models import load_weights
from webrwkv.safetensors import float32_to_bf16_bits, read_header, write_safetensors
from webrwkv.sources import BytesSource, LocalFileSource

GOLDEN = Path(__file__).parent / "golden"
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1}


def ours(data: bytes) -> tuple[dict, dict]:
    """{name: (dtype, shape, bytes)} and the metadata, through webrwkv's reader."""
    src = BytesSource(data)
    h = read_header(src)
    return {n: (t.dtype, list(t.shape), src.read(t.start, t.nbytes)) for n, t in h.tensors.items()}, h.metadata


def theirs(path: Path) -> tuple[dict, dict]:
    """The same through the library: safe_open for names, dtypes, shapes and metadata, deserialize for bytes."""
    raw = {n: d for n, d in safetensors.deserialize(path.read_bytes())}
    out = {}
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        for n in f.keys():
            s = f.get_slice(n)
            out[n] = (s.get_dtype(), list(s.get_shape()), bytes(raw[n]["data"]))
            assert raw[n]["dtype"] == s.get_dtype() and list(raw[n]["shape"]) == list(s.get_shape())
    return out, meta


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.st")), ids=lambda p: p.name)
def test_golden_files_index_the_same_in_the_library(path):
    assert ours(path.read_bytes()) == theirs(path)


def fuzz_file(rng: random.Random) -> tuple[bytes, dict]:
    """A valid safetensors file from the format's rules, by hand: random names (any UTF-8), dtypes, shapes
    (empty and 0-d included), data order, metadata, JSON spacing and header padding."""
    n = rng.randint(0, 12)
    alphabet = "abcXYZ019._-/ é中🙂"
    names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))) for _ in range(n)}
    names.discard("__metadata__")
    header, blobs, pos = {}, [], 0
    for name in rng.sample(sorted(names), len(names)):
        dt = rng.choice(sorted(SIZES))
        shape = [rng.choice([0, 1, 2, 3, 7, 16]) for _ in range(rng.randint(0, 4))]
        numel = int(np.prod(shape)) if shape else 1
        data = rng.randbytes(numel * SIZES[dt])
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + len(data)]}
        blobs.append(data)
        pos += len(data)
    if rng.random() < 0.6:
        header["__metadata__"] = {f"k{i}é": rng.choice(["", "pt", "v", "x" * 40]) for i in range(rng.randint(0, 4))}
    items = list(header.items())
    rng.shuffle(items)
    sep = rng.choice([(",", ":"), (", ", ": "), (",", ": ")])
    h = json.dumps(dict(items), separators=sep, ensure_ascii=rng.random() < 0.5).encode()
    h += b" " * (-(8 + len(h)) % 8 + 8 * rng.randint(0, 2))
    meta = header.get("__metadata__", {})
    return struct.pack("<Q", len(h)) + h + b"".join(blobs), meta


def test_fuzz_made_valid_files_index_the_same(tmp_path):
    rng = random.Random(20261201)
    for i in range(300):
        data, meta = fuzz_file(rng)
        path = tmp_path / f"f{i}.safetensors"
        path.write_bytes(data)
        mine, their = ours(data), theirs(path)
        assert mine == their, f"case {i}"
        assert mine[1] == meta


def sample_arrays(rng: np.random.Generator) -> dict:
    return {"a.f32": rng.standard_normal((3, 5)).astype(np.float32), "b.f16": rng.standard_normal(7).astype(np.float16),
            "c.i8": rng.integers(-128, 128, (2, 2), dtype=np.int8), "d.u8": rng.integers(0, 256, 4, dtype=np.uint8),
            "e.empty": np.zeros((0, 4), np.float32), "f.scalar": np.float32(1.5)}


def test_files_the_project_writes_load_in_the_library(tmp_path):
    arrays = sample_arrays(np.random.default_rng(3))
    write_safetensors(tmp_path / "w.st", arrays, metadata={"format": "pt", "note": "ü"})
    with safe_open(str(tmp_path / "w.st"), framework="numpy") as f:
        assert f.metadata() == {"format": "pt", "note": "ü"}
        assert set(f.keys()) == set(arrays)
        for n, a in arrays.items():
            got = f.get_tensor(n)
            assert got.dtype == np.asarray(a).dtype and np.array_equal(got, a), n
    # bf16: numpy has no bfloat16, so compare the library's raw bytes with the rounded bits
    x = np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32)
    write_safetensors(tmp_path / "b.st", {"x": x, "y": x[0]}, dtype={"x": "bf16", "y": "fp32"})
    raw = dict(safetensors.deserialize((tmp_path / "b.st").read_bytes()))
    assert raw["x"]["dtype"] == "BF16" and raw["x"]["shape"] == [4, 3]
    assert bytes(raw["x"]["data"]) == float32_to_bf16_bits(x).astype("<u2").tobytes()
    assert bytes(raw["y"]["data"]) == x[0].astype("<f4").tobytes()


@pytest.mark.parametrize("src", ["v7.pth", "v6-bf16.pth", "v5.st"])
def test_convert_output_loads_in_the_library_with_the_same_weights(src, tmp_path):
    out = tmp_path / "out.st"
    convert_main(argparse.Namespace(input=str(GOLDEN / src), output=str(out), layout="official", dtype="fp32"))
    _, w = load_weights(GOLDEN / src)
    _, w2 = load_weights(out)
    assert all(np.array_equal(w[n], w2[n]) for n in w)
    mine, their = ours(out.read_bytes()), theirs(out)
    assert mine == their and mine[1]["layout"] == "official"


# ---- writing goes through a fresh private folder, renamed into place ------------------------------

def write(out: Path) -> None:
    convert_main(argparse.Namespace(input=str(GOLDEN / "v4.st"), output=str(out), layout="converted", dtype="fp16"))


def test_a_planted_temporary_name_is_never_followed(tmp_path):
    """The old writer wrote OUT.tmp and renamed it: a symlink planted under that name made it overwrite
    the link's target. No name next to the output is used any more, and the output itself, when it is a
    symlink, is replaced, not written through."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out.st"
    (tmp_path / "out.st.tmp").symlink_to(victim)
    write(out)
    assert victim.read_text() == "keep me"
    assert read_header(LocalFileSource(out)).tensors  # a real file, not the link's target
    before = sorted(p.name for p in tmp_path.iterdir())
    link = tmp_path / "link.st"
    link.symlink_to(victim)
    write(link)
    assert victim.read_text() == "keep me" and not link.is_symlink() and read_header(LocalFileSource(link)).tensors
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["link.st"])  # nothing left behind


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "out.st"
    out.write_bytes(b"old contents")

    def broken(specs, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise safetensors.SafetensorError("No space left on device")

    monkeypatch.setattr(safetensors, "serialize_file", broken)
    with pytest.raises(WebRwkvError, match=r"cannot write .*out\.st.*No space left"):
        write(out)
    assert out.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.st"]
    monkeypatch.undo()
    fresh = tmp_path / "new.st"
    monkeypatch.setattr(safetensors, "serialize_file", broken)
    with pytest.raises(WebRwkvError):
        write(fresh)
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out.st"]


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write(tmp_path / "out.st")
    finally:
        os.umask(old)
    assert (tmp_path / "out.st").stat().st_mode & 0o777 == 0o644
