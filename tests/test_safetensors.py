"""Safetensors: headers built by hand from the format spec, read back; the writer's bytes checked
against the spec; every malformed file refused with ModelFormatError."""

import json
import struct

import numpy as np
import pytest

from webrwkv.errors import ModelFormatError, WebRwkvError
from webrwkv.safetensors import TensorInfo, read_header, read_tensor, tensor_to_numpy, write_safetensors
from webrwkv.server import make_server
from webrwkv.sources import BytesSource, LocalFileSource


def build(header: dict, data: bytes, align: bool = True) -> bytes:
    """A safetensors file from the spec: u64 LE header length, JSON header, raw data."""
    h = json.dumps(header).encode()
    if align:
        h += b" " * (-(8 + len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + data


class CountingSource(BytesSource):
    """Records every (offset, length) read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data, "counted.st")
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return super().read(offset, length)


def sample_file() -> tuple[bytes, dict]:
    f32 = struct.pack("<4f", 1.5, -2.0, 0.25, 3.0)
    f16 = struct.pack("<3e", 0.5, -1.0, 65504.0)
    bf16 = struct.pack("<3H", 0x3F80, 0xC040, 0x4049)  # 1.0, -3.0, 3.140625
    i8 = struct.pack("<4b", -128, -1, 0, 127)
    u8 = bytes([0, 7, 255])
    blobs = [("w.f32", "F32", [2, 2], f32), ("w.f16", "F16", [3], f16), ("w.bf16", "BF16", [1, 3], bf16),
             ("w.i8", "I8", [4], i8), ("w.u8", "U8", [3], u8)]
    header: dict = {"__metadata__": {"format": "pt", "note": "hand built"}}
    pos, data = 0, b""
    for name, dt, shape, raw in reversed(blobs):  # data order differs from name order on purpose
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + len(raw)]}
        pos, data = pos + len(raw), data + raw
    expected = {
        "w.f32": np.array([[1.5, -2.0], [0.25, 3.0]]), "w.f16": np.array([0.5, -1.0, 65504.0]),
        "w.bf16": np.array([[1.0, -3.0, 3.140625]]), "w.i8": np.array([-128, -1, 0, 127]),
        "w.u8": np.array([0, 7, 255]),
    }
    return build(header, data), expected


def test_read_header_hand_built_file_all_dtypes(tmp_path):
    blob, expected = sample_file()
    (n,) = struct.unpack("<Q", blob[:8])
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    for src in (str(path), path, LocalFileSource(path), BytesSource(blob), blob):
        h = read_header(src)
        assert h.data_start == 8 + n and h.file_size == len(blob)
        assert h.metadata == {"format": "pt", "note": "hand built"}
        assert set(h.tensors) == set(expected)
        assert h.tensors["w.u8"] == TensorInfo("w.u8", "U8", (3,), 8 + n, 8 + n + 3)
        assert h.tensors["w.f32"].end == len(blob) and h.tensors["w.f32"].nbytes == 16
        assert h.tensors["w.bf16"].shape == (1, 3) and h.tensors["w.bf16"].numel == 3
        with LocalFileSource(path) as s:
            for name, want in expected.items():
                got = read_tensor(s, h.tensors[name])
                assert got.dtype == np.float32 and got.shape == want.shape
                np.testing.assert_array_equal(got, want.astype(np.float32))


def test_read_header_reads_no_tensor_data():
    blob, _ = sample_file()
    big = build({"x": {"dtype": "F32", "shape": [1000, 256], "data_offsets": [0, 1024000]}}, bytes(1024000))
    for data in (blob, big):
        src = CountingSource(data)
        h = read_header(src)
        assert max(o + n for o, n in src.reads) == h.data_start
        assert len(src.reads) == 2


def test_writer_bytes_follow_the_spec(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "b.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "a.bias": rng.standard_normal(7).astype(np.float32),
        "c.q": np.array([-5, 0, 9], dtype=np.int8),
        "d.u": np.array([[1, 200]], dtype=np.uint8),
    }
    path = tmp_path / "w.safetensors"
    write_safetensors(path, arrays, metadata={"version": "7"}, dtype="fp16")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    text = raw[8 : 8 + n].decode()
    assert text == text.rstrip(" ") + " " * (len(text) - len(text.rstrip(" ")))  # padded with spaces only
    header = json.loads(text)
    assert header.pop("__metadata__") == {"version": "7"}
    names = list(header)
    assert names == sorted(arrays)
    pos = 0
    for name in names:
        e = header[name]
        begin, end = e["data_offsets"]
        assert begin == pos
        pos = end
        a = arrays[name]
        want = a.astype("<f2") if a.dtype.kind == "f" else a
        assert e["dtype"] == {"f": "F16", "i": "I8", "u": "U8"}[a.dtype.kind]
        assert e["shape"] == list(a.shape)
        assert raw[8 + n + begin : 8 + n + end] == want.tobytes()
    assert 8 + n + pos == len(raw)


def test_writer_bf16_rounds_to_nearest_even(tmp_path):
    one = 1.0
    vals = np.array([one, one + 2.0**-8, one + 3 * 2.0**-8, -3.0, np.inf, np.nan, 3.14159265], dtype=np.float32)
    # bf16 keeps 7 mantissa bits: 1+2^-8 is a tie -> even (1.0); 1+3*2^-8 is a tie -> 1+2^-6 (0x3F82)
    want_bits = [0x3F80, 0x3F80, 0x3F82, 0xC040, 0x7F80, 0x7FC0, 0x4049]
    path = tmp_path / "b.st"
    write_safetensors(path, {"v": vals}, dtype="bf16")
    h = read_header(path)
    raw = path.read_bytes()[h.tensors["v"].start : h.tensors["v"].end]
    assert list(struct.unpack("<7H", raw)) == want_bits
    back = tensor_to_numpy(h.tensors["v"], raw)
    np.testing.assert_array_equal(back[:5], [1.0, 1.0, 1.0 + 2.0**-6, -3.0, np.inf])
    assert np.isnan(back[5]) and back[6] == 3.140625


def test_writer_roundtrip_fp32_default_and_per_tensor_dtype(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float16)
    path = tmp_path / "r.st"
    write_safetensors(path, {"a": a, "b": b, "c": np.zeros((0, 4), np.float32)})
    h = read_header(path)
    assert [h.tensors[k].dtype for k in "abc"] == ["F32", "F16", "F32"]
    with LocalFileSource(path) as s:
        np.testing.assert_array_equal(read_tensor(s, h.tensors["a"]), a)
        np.testing.assert_array_equal(read_tensor(s, h.tensors["b"]), b.astype(np.float32))
        assert read_tensor(s, h.tensors["c"]).shape == (0, 4)
    write_safetensors(path, {"a": a, "b": b}, dtype={"a": "bf16", "b": "fp32"})
    h = read_header(path)
    assert (h.tensors["a"].dtype, h.tensors["b"].dtype) == ("BF16", "F32")
    with pytest.raises(ValueError):
        write_safetensors(tmp_path / "x.st", {"a": a}, dtype="fp8")


GOOD = {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
LFS = (b"version https://git-lfs.github.com/spec/v1\n"
       b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 191141048\n")
HTML = b"\n<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Log in</body></html>\n"

BAD_FILES = {
    "lfs_pointer": (LFS, ["git lfs pull", "LFS pointer", "191141048"]),
    "html_page": (HTML, ["is an HTML page, not a model", "raw .safetensors"]),
    "text_error": (b'{"error": "Repository not found or gated"}\n', ["text file", "Repository not found",
                                                                      "check the path"]),
    "too_small": (b"\x01\x00", ["only 2 bytes"]),
    "header_over_4mb": (struct.pack("<Q", 5 * 2**20) + b"{}" * 10, ["over the 4 MB"]),
    "header_past_end": (struct.pack("<Q", 1000) + b'{"t":1}', ["past the end"]),
    "invalid_json": (build({}, b"")[:8] + b"{oops:  ", ["not valid JSON"]),
    "non_utf8": (struct.pack("<Q", 8) + b"{\xff\xfe}    ", ["not valid JSON"]),
    "not_an_object": (build([1, 2], b""), ["not a JSON object"]),  # type: ignore[arg-type]
    "missing_field": (build({"t": {"dtype": "F32", "shape": [2]}}, bytes(8)), ["data_offsets"]),
    "offsets_reversed": (build({"t": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, bytes(8)),
                         ["out-of-range"]),
    "offsets_negative": (build({"t": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, bytes(8)),
                         ["out-of-range"]),
    "offsets_overlap": (build({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
                        ["overlap"]),
    "size_mismatch": (build({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
                      ["needs 12 bytes", "span 8"]),
    "bad_shape": (build({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)), ["shape"]),
    "unknown_dtype": (build({"t": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)),
                      ["'F64'", "F32, F16 or BF16"]),
    "truncated_data": (build(GOOD, bytes(5)), ["truncated", "ends at byte", "download the file again"]),
    "bad_metadata": (build({"__metadata__": [1], **GOOD}, bytes(8)), ["__metadata__"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_refused_with_a_clear_message(case, tmp_path):
    blob, words = BAD_FILES[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ModelFormatError) as ei:
        read_header(path)
    msg = str(ei.value)
    assert isinstance(ei.value, WebRwkvError)
    assert str(path) in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("case, words, local_words", [
    ("html_page", ["the server returned a web page, not a model", "check the URL"], ["is an HTML page"]),
    ("text_error", ["text file", "from the server", "check the URL"], ["check the path"]),
])
def test_bad_files_over_http_blame_the_server(case, words, local_words, tmp_path):
    # the local-file wording (above) would mislead for a URL, and the server wording for a local file
    (tmp_path / "m.st").write_bytes(BAD_FILES[case][0])
    srv = make_server("127.0.0.1", 0, {"models": tmp_path})
    srv.start()
    try:
        with pytest.raises(ModelFormatError) as ei:
            read_header(srv.url + "models/m.st")
    finally:
        srv.shutdown()
        srv.server_close()
    msg = str(ei.value)
    assert all(w in msg for w in words) and not any(w in msg for w in local_words), msg
    with pytest.raises(ModelFormatError) as ei:
        read_header(tmp_path / "m.st")
    assert "server" not in str(ei.value) and all(w in str(ei.value) for w in local_words)


def test_good_reference_file_passes():
    # the same builder as the failure cases makes a file that reads fine (the failures are real)
    h = read_header(BytesSource(build(GOOD, struct.pack("<2f", 1.0, 2.0))))
    assert h.tensors["t"].shape == (2,)
    h = read_header(BytesSource(build(GOOD, struct.pack("<2f", 1.0, 2.0), align=False) + b"extra"))
    assert h.file_size == h.tensors["t"].end + 5


def test_tensor_to_numpy_rejects_wrong_length():
    info = TensorInfo("t", "F32", (2,), 0, 8)
    with pytest.raises(ModelFormatError):
        tensor_to_numpy(info, b"\x00" * 4)


def _entry(**over):
    return {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], **over}}


HOSTILE_HEADERS = {
    # each of these once escaped as TypeError, ValueError or RecursionError instead of ModelFormatError
    "dtype_is_a_list": (json.dumps(_entry(dtype=["F32"])).encode(), ["dtype ['F32']"]),
    "dtype_is_an_object": (json.dumps(_entry(dtype={"a": 1})).encode(), ["dtype {'a': 1}"]),
    "shape_product_of_thousands_of_digits": (json.dumps(_entry(shape=[10**300] * 16)).encode(),
                                             ["invalid shape", "at most 8 dimensions"]),
    "shape_dim_too_large": (json.dumps(_entry(shape=[2**41])).encode(), ["invalid shape"]),
    "number_of_5000_digits": (b'{"t": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 8]}}',
                              ["not valid JSON", "thousands of digits"]),
    "nested_arrays": (b"[" * 100_000 + b"]" * 100_000, ["not valid JSON", "nests deeper"]),
    "nested_objects": (b'{"a":' * 5000 + b"1" + b"}" * 5000, ["not valid JSON", "nests deeper"]),
    "metadata_value_not_a_string": (json.dumps({"__metadata__": {"a": 1}, **GOOD}).encode(), ["__metadata__"]),
    "metadata_empty_list": (json.dumps({"__metadata__": [], **GOOD}).encode(), ["__metadata__"]),
    "metadata_string": (json.dumps({"__metadata__": "x", **GOOD}).encode(), ["__metadata__"]),
    "name_of_a_megabyte": (json.dumps({"n" * (1 << 20): {"dtype": "F64", "shape": [], "data_offsets": [0, 8]}}
                                      ).encode(), ["'nnnnnnnn", "...", "F64"]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_hostile_headers_raise_model_format_error(case):
    from webrwkv.safetensors import parse_header

    header, words = HOSTILE_HEADERS[case]
    with pytest.raises(ModelFormatError) as ei:
        parse_header(header, 1 << 20, "m.st")
    msg = str(ei.value)
    assert all(w in msg for w in words), msg
    assert len(msg) < 600  # a clear sentence, not the megabyte value


def test_metadata_null_is_empty_and_strings_are_kept():
    from webrwkv.safetensors import parse_header

    assert parse_header(json.dumps({"__metadata__": None, **GOOD}).encode(), 1 << 20).metadata == {}
    assert parse_header(json.dumps({"__metadata__": {"a": "b"}, **GOOD}).encode(), 1 << 20).metadata == {"a": "b"}


def test_many_dims_are_refused_in_linear_time():
    """A shape of a million dimensions once took seconds growing quadratically (a huge product)."""
    import time

    from webrwkv.safetensors import parse_header

    header = json.dumps(_entry(shape=[2] * 1_000_000)).encode()
    t0 = time.perf_counter()
    with pytest.raises(ModelFormatError, match="at most 8 dimensions"):
        parse_header(header, 1 << 30, "m.st")
    assert time.perf_counter() - t0 < 5  # a generous safety limit; before the fix: tens of seconds


def test_header_over_the_cap_is_refused_before_it_is_read():
    """A header of tiny objects just over the cap is refused from its length alone: no read, no parse."""
    from webrwkv.safetensors import MAX_HEADER

    body = b'{"__metadata__":[' + b"[]," * ((MAX_HEADER + 64) // 3) + b"[]]}"
    blob = struct.pack("<Q", len(body)) + body
    src = CountingSource(blob)
    with pytest.raises(ModelFormatError, match="over the 4 MB"):
        read_header(src)
    assert all(n <= 1024 for _, n in src.reads)  # only the length and the first bytes were looked at
    assert MAX_HEADER >= 2 << 20  # real headers are ~200 KB at most: keep a wide margin


def test_header_at_the_cap_parses_within_time_and_memory():
    """The worst header under the cap (millions of empty arrays) is bounded: seconds and ~100 MB, not GB."""
    import time
    import tracemalloc

    from webrwkv.safetensors import MAX_HEADER, parse_header

    body = b'{"__metadata__":[' + b"[]," * ((MAX_HEADER - 64) // 3) + b"[]]}"
    assert len(body) <= MAX_HEADER
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ModelFormatError, match="__metadata__"):
            parse_header(body, len(body) + 8, "m.st")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 30 and peak < 300 << 20, (time.perf_counter() - t0, peak >> 20)
