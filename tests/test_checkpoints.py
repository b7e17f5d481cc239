"""The torch.save reader (webrwkv.checkpoints / torchzip) on files torch itself wrote (tools/make_golden.py):
the values torch gives, ranged reads only, other zip writers and zip64, and every unsafe or unusable file
refused with ModelFormatError saying what was found and what to do, without running anything from it."""

from __future__ import annotations

import collections
import io
import os
import pickle
import random
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from webrwkv.checkpoints import read_checkpoint, read_model_header
from webrwkv.errors import ModelFormatError, WebRwkvError
from webrwkv.models import load_index
from webrwkv.sources import BytesSource, LocalFileSource
from webrwkv.torchzip import TAIL

GOLDEN = Path(__file__).parent / "golden"
NP = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1",
      "BOOL": "?"}


class Counting(BytesSource):
    """Bytes in memory that record every range read (read_ranges included)."""

    def __init__(self, data: bytes, name: str = "m.pth") -> None:
        super().__init__(data, name)
        self.reads: list[tuple[int, int]] = []

        self.batches = 0  # calls to read or read_ranges: the round trips a remote source would make

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        self.batches += 1
        return super().read(offset, length)

    def read_ranges(self, ranges):
        self.reads += list(ranges)
        self.batches += 1
        return [BytesSource.read(self, o, n) for o, n in ranges]


def values(src, t) -> np.ndarray:
    raw = src.read(t.start, t.nbytes)
    if t.dtype == "BF16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
    return np.frombuffer(raw, NP[t.dtype]).reshape(t.shape)


def rezip(src: Path, dst: Path, replace: dict | None = None, compress: int = zipfile.ZIP_STORED,
          comment: bytes = b"", drop: tuple = ()) -> Path:
    """The same members written again by Python's zipfile (no 64-byte alignment, no data descriptors)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compress) as zout:
        for info in zin.infolist():
            if info.filename.split("/", 1)[1] in drop:
                continue
            data = (replace or {}).get(info.filename.split("/", 1)[1], zin.read(info.filename))
            zout.writestr(info.filename, data)
        zout.comment = comment
    return dst


def with_pickle(dst: Path, payload: bytes, base: str = "v4.pth") -> Path:
    """A real checkpoint whose data.pkl is replaced by `payload`."""
    return rezip(GOLDEN / base, dst, replace={"data.pkl": payload})


# ---- what torch wrote -------------------------------------------------------------------------

def test_values_match_torch_for_shared_offset_and_odd_tensors():
    """Storage sharing, offsets into a storage, 0-d and empty tensors, several dtypes: the bytes the index
    points at are the values torch itself read back."""
    want = np.load(GOLDEN / "pth-views.npz")
    with LocalFileSource(GOLDEN / "pth-views.pth") as src:
        h = read_checkpoint(src)
        assert set(h.tensors) == set(want.files)
        for name in want.files:
            got = values(src, h.tensors[name])
            assert got.shape == want[name].shape and np.array_equal(got, want[name]), name
        assert h.tensors["rows"].start == h.tensors["base"].start + 2 * 8 * 4  # base[2:] of a [6, 8] fp32
        assert {h.tensors[n].dtype for n in ("ids", "mask", "bf16", "half")} == {"I64", "BOOL", "BF16", "F16"}


@pytest.mark.parametrize("name", ["v4.pth", "v5-fp16.pth", "v6-bf16.pth", "v7.pth", "pth-views.pth"])
def test_predicted_places_equal_the_read_local_headers(name):
    """verify=False (the browser) places the storages from the directory alone; its checks hold on the real
    bytes and it gives the same index as reading every local header."""
    data = (GOLDEN / name).read_bytes()
    exact, guess = read_checkpoint(BytesSource(data)), read_checkpoint(BytesSource(data), verify=False)
    assert guess.tensors == exact.tensors and not exact.checks and guess.checks
    for offset, expect, _ in guess.checks:
        assert data[offset: offset + len(expect)] == expect


def test_index_reads_only_the_tail_the_pickle_and_local_headers():
    data = (GOLDEN / "v7.pth").read_bytes()
    src = Counting(data)
    h = read_checkpoint(src)
    spans = sorted((t.start, t.end) for t in h.tensors.values())
    tail = [(o, n) for o, n in src.reads if o + n == len(data)]
    assert len(tail) == 1 and tail[0][1] <= TAIL  # the end records and directory, in one read
    for o, n in src.reads:
        assert (o, n) in tail or not any(o < b and a < o + n for a, b in spans), f"read {o}+{n} touches tensor data"
    assert sum(n for o, n in src.reads if (o, n) not in tail) < 20_000
    lazy = Counting(data)
    read_checkpoint(lazy, verify=False)
    assert lazy.batches <= 3  # the start, the tail, then the small members' headers and data in one batch


def test_other_zip_writers_zip64_and_a_comment(tmp_path, monkeypatch):
    """Members re-written by Python's zipfile (unaligned, no data descriptors), then with zip64 records and
    extra fields everywhere, and with an archive comment: same tensors, same values."""
    base = LocalFileSource(GOLDEN / "v6.pth")
    ref = read_checkpoint(base)
    plain = rezip(GOLDEN / "v6.pth", tmp_path / "plain.pth", comment=b"a comment \x00 PK\x05\x06 inside")
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 0)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 0)
    wide = rezip(GOLDEN / "v6.pth", tmp_path / "wide.pth")
    assert b"PK\x06\x06" in wide.read_bytes()[-200:]
    for path in (plain, wide):
        for verify in (True, False):
            with LocalFileSource(path) as src:
                h = read_checkpoint(src, verify=verify)
                assert h.tensors.keys() == ref.tensors.keys()
                for n, t in h.tensors.items():
                    assert (t.dtype, t.shape) == (ref.tensors[n].dtype, ref.tensors[n].shape)
                    assert src.read(t.start, t.nbytes) == base.read(ref.tensors[n].start, ref.tensors[n].nbytes)
                data = path.read_bytes()
                assert all(data[o: o + len(e)] == e for o, e, _ in h.checks)
    base.close()


def test_a_pth_loads_like_its_safetensors_twin():
    i1, r1 = load_index(GOLDEN / "v5.pth")
    i2, r2 = load_index(GOLDEN / "v5.st")
    strip = lambda d: {k: v for k, v in d.items() if k not in ("path", "nbytes")}  # noqa: E731
    assert strip(i1.to_dict()) == strip(i2.to_dict())
    assert {n: (r.dtype, r.shape, r.transform) for n, r in r1.items()} == \
        {n: (r.dtype, r.shape, r.transform) for n, r in r2.items()}


# ---- nothing in the file runs -------------------------------------------------------------------

class SystemCall:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class ExecCall:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


class Other:
    """A class of this test module: pickled by reference to it (GLOBAL + NEWOBJ/REDUCE/BUILD)."""

    def __init__(self) -> None:
        self.x = 1


class Counter:
    def __reduce__(self):
        import collections
        return (collections.Counter, ({"a": 1},))


def payloads(sentinel: Path) -> list[tuple[str, bytes, str]]:
    """(what, pickle bytes, what the message must name), over every pickle protocol."""
    out = []
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        # protocols 0 and 1 (never written by torch.save) are refused at their first text opcode
        said = lambda what: what if proto >= 2 else f"{what}|opcode|copy_reg._reconstructor"  # noqa: E731
        out.append((f"os.system p{proto}", pickle.dumps({"w": SystemCall(f"touch {sentinel}")}, proto),
                    said("system")))
        out.append((f"exec p{proto}", pickle.dumps(ExecCall(f"open({str(sentinel)!r}, 'w')"), proto), said("exec")))
        out.append((f"other class p{proto}", pickle.dumps({"w": Other()}, proto), said("Other")))
        out.append((f"Counter p{proto}", pickle.dumps({"w": Counter()}, proto), said("Counter")))
    # torch's legacy storage loader runs torch.load on bytes: never accepted
    out.append(("_load_from_bytes", b"\x80\x02ctorch.storage\n_load_from_bytes\nq\x00C\x01xq\x01\x85q\x02Rq\x03.",
                "torch.storage._load_from_bytes"))
    # a persistent id that is not a storage record
    out.append(("persid", b"\x80\x02X\x06\x00\x00\x00moduleq\x00\x85q\x01Q.", "not a tensor storage"))
    return out


def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path):
    sentinel = tmp_path / "ran"
    cases = payloads(sentinel)
    pickle.loads(cases[8][1])  # the control: pickle itself runs the protocol-2 os.system payload
    assert sentinel.exists()
    sentinel.unlink()
    for what, payload, named in cases:
        path = with_pickle(tmp_path / "evil.pth", payload)
        with pytest.raises(ModelFormatError, match=named) as e:
            load_index(path)
        assert "never runs code" in str(e.value) or "not part of a state dict" in str(e.value), what
        assert not sentinel.exists(), what


def test_official_pickle_with_a_payload_slipped_in(tmp_path):
    """The real data.pkl of a checkpoint with one more entry whose value is a call: refused, not skipped."""
    real = zipfile.ZipFile(GOLDEN / "v4-fp16.pth").read("v4-fp16/data.pkl")
    assert real.endswith(b"u.")  # SETITEMS, STOP
    evil = pickle.dumps(SystemCall(f"touch {tmp_path / 'ran'}"), 2)[2:-1]  # without PROTO and STOP
    payload = real[:-2] + b"X\x04\x00\x00\x00evil" + evil + b"u."
    with pytest.raises(ModelFormatError, match="system"):
        load_index(with_pickle(tmp_path / "m.pth", payload, "v4-fp16.pth"))
    assert not (tmp_path / "ran").exists()


# ---- files that cannot be used say what to do ---------------------------------------------------

def test_compressed_entries(tmp_path):
    path = rezip(GOLDEN / "v4.pth", tmp_path / "deflate.pth", compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(ModelFormatError, match=r"compressed.*uncompressed.*torch\.save\(torch\.load"):
        load_index(path)


def test_truncated_files(tmp_path):
    data = (GOLDEN / "v4.pth").read_bytes()
    for cut in (len(data) - 1, len(data) - 30, len(data) // 2, 5000, 100, 10):
        with pytest.raises(ModelFormatError, match="truncated|damaged") as e:
            read_model_header(BytesSource(data[:cut], "cut.pth"))
        assert "download" in str(e.value)


def test_legacy_torch_file():
    with pytest.raises(ModelFormatError, match=r"legacy format.*re-save.*torch\.save\(torch\.load"):
        load_index(GOLDEN / "pth-legacy.pth")


def test_non_contiguous_view():
    with pytest.raises(ModelFormatError, match=r"'head\.weight' is a non-contiguous view.*\.contiguous\(\)"):
        read_checkpoint(LocalFileSource(GOLDEN / "pth-strided.pth"))


@pytest.mark.parametrize("obj,said", [
    ([1, 2], "holds a list, not a state dict"),
    ({"epoch": 3, "lr": 0.1}, r"dict without tensors \(keys: epoch, lr\)"),
    ("text", "holds a str"),
])
def test_pickles_that_are_not_state_dicts(tmp_path, obj, said):
    with pytest.raises(ModelFormatError, match=said):
        load_index(with_pickle(tmp_path / "m.pth", pickle.dumps(obj, 2)))


class _Record:
    """A storage record: pickled as torch.save's persistent id, not as an object."""

    def __init__(self, rec: tuple) -> None:
        self.rec = rec


class FakeTensor:
    """Pickles as torch.save pickles a tensor: _rebuild_tensor_v2(<storage record>, offset, size, stride, ...)."""

    def __init__(self, key: str, kind: str, numel: int, offset: int, shape: tuple, stride: tuple) -> None:
        self.key, self.kind, self.numel = key, kind, numel
        self.args = (offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self):
        rec = _Record(("storage", getattr(sys.modules["torch"], self.kind), self.key, "cpu", self.numel))
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, (rec,) + self.args)


def torch_like_pickle(obj, monkeypatch, protocol: int = 2) -> bytes:
    """A pickle with torch.save's structure (its globals and persistent ids), made without torch: stand-in
    `torch` and `torch._utils` modules exist only for the pickler to name."""
    fake, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def rebuild(*args):
        raise AssertionError("never called")

    rebuild.__module__, rebuild.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = rebuild
    for kind in ("FloatStorage", "HalfStorage", "BFloat16Storage", "ComplexFloatStorage"):
        setattr(fake, kind, type(kind, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", fake)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol)
    p.persistent_id = lambda o: o.rec if isinstance(o, _Record) else None
    p.dump(obj)
    return buf.getvalue()


def test_torch_like_pickles_are_read_as_torch_writes_them(tmp_path, monkeypatch):
    """The stand-in writer gives what torch gives (checked on a real file's tensor), so the cases below
    can be made without torch."""
    sd = {"emb.weight": FakeTensor("0", "FloatStorage", 48, 0, (2, 3), (3, 1))}
    path = rezip(GOLDEN / "pth-views.pth", tmp_path / "m.pth", replace={"data.pkl": torch_like_pickle(sd, monkeypatch)})
    with LocalFileSource(path) as src:
        got = values(src, read_checkpoint(src).tensors["emb.weight"])
    base = np.load(GOLDEN / "pth-views.npz")["base"]  # storage 0 of pth-views.pth: base, [6, 8] fp32
    assert np.array_equal(got, base.reshape(-1)[:6].reshape(2, 3))


def test_a_single_tensor_a_nested_state_dict_and_odd_tensors(tmp_path, monkeypatch):
    def load(obj):
        data = torch_like_pickle(obj, monkeypatch)
        return read_checkpoint(LocalFileSource(rezip(GOLDEN / "pth-views.pth", tmp_path / "m.pth",
                                                     replace={"data.pkl": data})))

    t = FakeTensor("0", "FloatStorage", 48, 8, (4, 8), (8, 1))
    with pytest.raises(ModelFormatError, match="holds a single tensor"):
        load(t)
    h = load({"state_dict": {"a": t}, "epoch": 3, "opt": {"lr": 0.1}})
    assert list(h.tensors) == ["a"]
    with pytest.raises(ModelFormatError, match=r"'b' is a non-contiguous view.*strides \[1, 8\]"):
        load({"b": FakeTensor("0", "FloatStorage", 48, 0, (8, 6), (1, 8))})
    with pytest.raises(ModelFormatError, match="runs past the end of its storage"):
        load({"c": FakeTensor("0", "FloatStorage", 48, 40, (4, 8), (8, 1))})
    with pytest.raises(ModelFormatError, match=r"storage should hold|should hold 40 F16"):
        load({"d": FakeTensor("0", "HalfStorage", 40, 0, (40,), (1,))})
    with pytest.raises(ModelFormatError, match="torch.ComplexFloatStorage"):
        load({"e": FakeTensor("0", "ComplexFloatStorage", 24, 0, (24,), (1,))})
    with pytest.raises(ModelFormatError, match="described two ways"):
        load({"f": FakeTensor("0", "FloatStorage", 48, 0, (2,), (1,)), "g": FakeTensor("0", "HalfStorage", 96, 0, (2,), (1,))})
    # dims of size 1 may have any stride, as torch allows
    h = load({"h": FakeTensor("0", "FloatStorage", 48, 0, (1, 8), (99, 1))})
    assert h.tensors["h"].nbytes == 32


def test_big_endian_checkpoint(tmp_path):
    with pytest.raises(ModelFormatError, match="big-endian"):
        load_index(rezip(GOLDEN / "v4.pth", tmp_path / "be.pth", replace={"byteorder": b"big"}))


# ---- bounded fuzzing ---------------------------------------------------------------------------

def test_fuzzed_checkpoints_parse_or_raise_project_errors():
    """Byte flips and truncations over every region of a real .pth (directory, end records, local headers,
    the pickle): each case parses or raises the project's own error, quickly."""
    data = (GOLDEN / "v5-fp16.pth").read_bytes()
    rng = random.Random(1234)
    h = read_checkpoint(BytesSource(data))
    hot = [0, 64, len(data) - 22, len(data) - 100, h.data_start] + [o for o, _, _ in h.checks[:20]]
    pkl_len = zipfile.ZipFile(io.BytesIO(data)).getinfo("v5-fp16/data.pkl").file_size
    t0, parsed, refused = time.perf_counter(), 0, 0
    for i in range(1500):
        buf = bytearray(data)
        kind = i % 3
        if kind == 0:  # flip bytes near a structure
            for _ in range(rng.randint(1, 4)):
                at = min(len(buf) - 1, max(0, rng.choice(hot) + rng.randint(-40, 40)))
                buf[at] = rng.randrange(256)
        elif kind == 1:  # flip bytes in the pickle
            for _ in range(rng.randint(1, 3)):
                buf[64 + rng.randrange(pkl_len)] = rng.randrange(256)
        else:  # cut anywhere
            buf = buf[: rng.randrange(len(buf))]
        start = time.perf_counter()
        try:
            read_model_header(BytesSource(bytes(buf), "fuzz.pth"), verify=bool(i % 2))
            parsed += 1
        except WebRwkvError:
            refused += 1
        assert time.perf_counter() - start < 1.0, f"case {i} took too long"
    assert parsed + refused == 1500 and refused > 500 and parsed > 50
    assert time.perf_counter() - t0 < 60


def test_pickle_bombs_are_bounded(tmp_path):
    """Deep nesting, huge memo indices, long strings past the end: refused or parsed, never a RecursionError."""
    deep = b"\x80\x02" + b"(" * 200000 + b"t" * 200000 + b"."
    with pytest.raises(ModelFormatError, match="holds a tuple"):
        load_index(with_pickle(tmp_path / "deep.pth", deep))
    nest = b"\x80\x02" + b")" + b"\x85" * 300000 + b"."  # ((((),),),)... one level per byte
    with pytest.raises(ModelFormatError, match="holds a tuple"):
        load_index(with_pickle(tmp_path / "nest.pth", nest))
    for bad in (b"\x80\x02X\xff\xff\xff\x7f", b"\x80\x02j\xff\xff\xff\xff.", b"\x80\x02\x8a\x40" + b"\x01" * 64 + b".",
                b"\x80\x02u.", b"\x80\x02.", b"\x80\x02(("):
        with pytest.raises(ModelFormatError):
            load_index(with_pickle(tmp_path / "bad.pth", bad))
