"""Fast native loading: fp16 matrices kept as views on the memory-mapped file, sliced GPU writes."""

import json

import numpy as np
import pytest

from gpu_util import GOLDEN, VERSIONS, device, drain
from webrwkv.errors import SourceError
from webrwkv.models import load_weights
from webrwkv.models.loader import to_layout
from webrwkv.safetensors import write_safetensors
from webrwkv.sources import LocalFileSource


def _check_same(fast: dict, full: dict) -> None:
    assert fast.keys() == full.keys()
    for name, a in full.items():
        b = fast[name]
        assert b.shape == a.shape, name
        assert b.dtype == (np.float16 if a.ndim >= 2 else np.float32), name
        np.testing.assert_array_equal(b.astype(np.float32), a, err_msg=name)


@pytest.mark.parametrize("version", VERSIONS)
def test_keep_fp16_gives_the_stored_matrices(version):
    """keep_fp16 leaves F16 matrices in fp16 (values equal to the float32 load) and vectors in float32."""
    path = GOLDEN / f"{version}-converted.st"
    info, full = load_weights(path)
    info2, fast = load_weights(path, keep_fp16=True)
    assert info2 == info
    _check_same(fast, full)


@pytest.mark.parametrize("version", ["v6", "v7"])
def test_keep_fp16_transposes_official_adapters(tmp_path, version):
    """Official-layout fp16 files store adapters [in, out]: keep_fp16 transposes them like the float32 load."""
    info, w = load_weights(GOLDEN / f"{version}-converted.st")
    path = tmp_path / "official.st"
    write_safetensors(path, to_layout(info, w, "official"), dtype="fp16")
    _, full = load_weights(path)
    _, fast = load_weights(path, keep_fp16=True)
    _check_same(fast, full)
    for a in fast.values():
        assert a.flags.c_contiguous


def test_bf16_and_fp32_files_still_load_as_float32():
    """Only stored fp16 stays fp16; other dtypes decode to float32 as before."""
    _, w = load_weights(GOLDEN / "v6-bf16.st", keep_fp16=True)
    assert all(a.dtype == np.float32 for a in w.values())
    _, w = load_weights(GOLDEN / "v6.st", keep_fp16=True)
    assert all(a.dtype == np.float32 for a in w.values())


def test_native_engine_matches_float32_weights():
    """load_engine's fp16 views give exactly the logits of the float32 weights of the same file."""
    from webrwkv.engine import load_engine
    from webrwkv.runtime import Runtime

    path = GOLDEN / "v6-converted.st"
    dev = device()
    eng = load_engine(path, "native", token_chunk_size=8, device=dev)
    info, w = load_weights(path)
    ref = Runtime(dev, info, w, max_batch=1, token_chunk_size=8)
    toks = np.random.default_rng(3).integers(0, info.vocab, 11).tolist()
    outs = []
    for rt in (eng.runtime, ref):
        rt.push(0, toks)
        outs.append(drain(rt, 0))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_local_view_reads_like_read(tmp_path):
    """view() gives the same bytes as read(), refuses ranges past the end, and outlives close()."""
    path = tmp_path / "bytes.bin"
    data = bytes(range(256)) * 40
    path.write_bytes(data)
    src = LocalFileSource(path)
    assert bytes(src.view(100, 500)) == src.read(100, 500) == data[100:600]
    assert bytes(src.view(7, 0)) == b""
    with pytest.raises(SourceError, match="truncated"):
        src.view(len(data) - 10, 11)
    v = src.view(0, len(data))
    src.close()
    assert bytes(v[-3:]) == data[-3:]


def test_sliced_writes_land_in_place(monkeypatch):
    """Writes larger than a slice go in several submitted pieces and still land byte-exact at their offset."""
    from webrwkv.gpu import native

    dev = device()
    monkeypatch.setattr(native, "WRITE_SLICE", 256)
    data = np.random.default_rng(5).standard_normal(1000).astype(np.float32)
    buf = dev.buffer(4 * 1100, label="sliced")
    dev.write(buf, 0, np.zeros(1100, np.float32))
    dev.write(buf, 64, data)
    got = np.frombuffer(dev.read(buf, 0, 4 * 1100), np.float32)
    np.testing.assert_array_equal(got[16:1016], data)
    assert not got[:16].any() and not got[1016:].any()


def test_bench_reports_load_time(capsys):
    """`webrwkv bench --model` adds the load seconds to its JSON and table; random weights have none."""
    from types import SimpleNamespace

    from webrwkv.benchmark import bench_main

    device()
    args = SimpleNamespace(model=str(GOLDEN / "v6-converted.st"), random=None, adapter=None, prefill=4, decode=2,
                           quant="none", json=True)
    assert bench_main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["version"] == "v6" and 0 < row["load_s"] < 60
    args.json = False
    assert bench_main(args) == 0
    assert "load s" in capsys.readouterr().out
    args.model, args.random, args.json = None, "v5:L1:C64", True
    assert bench_main(args) == 0
    assert json.loads(capsys.readouterr().out)["load_s"] is None


def test_local_view_falls_back_to_reading(tmp_path, monkeypatch):
    """A file that cannot be memory-mapped is read instead, with the same bytes."""
    import mmap

    def refuse(*args, **kwargs):
        raise OSError("no mmap here")

    path = tmp_path / "bytes.bin"
    path.write_bytes(bytes(range(200)))
    monkeypatch.setattr(mmap, "mmap", refuse)
    with LocalFileSource(path) as src:
        assert bytes(src.view(10, 20)) == bytes(range(10, 30))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
def test_loaded_engine_lets_go_of_the_file(tmp_path):
    """Once the weights are on the GPU the model file is no longer mapped (it may then change on disk
    without touching the running engine)."""
    import gc
    import shutil

    from webrwkv.engine import load_engine

    device()
    path = tmp_path / "model.st"
    shutil.copy(GOLDEN / "v7-converted.st", path)
    eng = load_engine(path, "native", device=device())
    gc.collect()
    assert str(path) not in open("/proc/self/maps").read()
    eng.runtime.push(0, [1, 2, 3])
    assert np.isfinite(drain(eng.runtime)).all()


def edit_header(src, dst, add=None, drop=(), shapes=None):
    """Copy a safetensors file with header edits, keeping every tensor's bytes: `add` {name: shape} appends
    zero F32 tensors at the end, `drop` removes entries, `shapes` {name: shape} relabels (same byte count)."""
    import struct

    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header, body = json.loads(data[8:8 + n]), bytearray(data[8 + n:])
    for name in drop:
        del header[name]
    for name, shape in (shapes or {}).items():
        header[name]["shape"] = list(shape)
    for name, shape in (add or {}).items():
        nbytes = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [len(body), len(body) + nbytes]}
        body += bytes(nbytes)
    h = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(h)) + h + bytes(body))
    return dst


def _refused_quickly(path, *words):
    """load_index raises ModelFormatError naming `words`, in well under a second's work and a few MB."""
    import time
    import tracemalloc

    from webrwkv.errors import ModelFormatError
    from webrwkv.models import load_index

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ModelFormatError) as ei:
            load_index(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    msg = str(ei.value)
    assert all(w in msg for w in words), msg
    assert elapsed < 5 and peak < 32 << 20, (elapsed, peak >> 20)  # generous bounds; before: minutes and GBs
    return msg


@pytest.mark.parametrize("name,words", [
    ("blocks.10000000.att.foo", ["numbered 0..N-1 without gaps", "blocks.10000000", "no blocks.2"]),
    ("blocks.100000000000000000000.att.foo", ["blocks.100000000000000000000.att.foo", "layer number"]),
    ("blocks.x.att.foo", ["'blocks.x.att.foo'", "layer number"]),
    ("blocks..att.foo", ["'blocks..att.foo'"]),
    ("blocks.01.att.foo", ["'blocks.01.att.foo'"]),
    ("blocks.-1.att.foo", ["'blocks.-1.att.foo'"]),
    ("blocks.3", ["'blocks.3'"]),
])
def test_bad_layer_indices_are_refused_at_once(tmp_path, name, words):
    """The layer count once came from the largest blocks.N: one tensor named blocks.10000000 made `info`
    build ten million layers of shapes (12 GB), a 21-digit one ran out of memory, blocks.x gave ValueError."""
    path = edit_header(GOLDEN / "v7.st", tmp_path / "m.st", add={name: (4,)})
    _refused_quickly(path, *words)


def test_layer_count_is_bounded_by_the_tensors_the_file_holds(tmp_path):
    """Layers 0..N-1 without gaps but one tensor each: refused before the shapes of N layers are built."""
    add = {f"blocks.{i}.att.foo": (1,) for i in range(2, 10_000)}
    path = edit_header(GOLDEN / "v7.st", tmp_path / "m.st", add=add)
    _refused_quickly(path, "names 10000 layers but holds only", "needs")


@pytest.mark.parametrize("name,shape,version", [
    ("emb.weight", (256 * 64,), "v7"),  # once: "not enough values to unpack"
    ("emb.weight", (), "v4"),
    ("blocks.0.att.r_k", (0, 64), "v7"),  # once: ZeroDivisionError
    ("blocks.0.att.r_k", (), "v7"),  # once: IndexError
    ("blocks.0.att.w1", (64 * 32,), "v7"),  # once: ValueError in the layout rule
    ("blocks.0.ffn.key.weight", (), "v5"),  # once: IndexError
    ("blocks.1.att.time_faaaa", (0,), "v6"),
])
def test_misshapen_tensors_are_named(tmp_path, name, shape, version):
    from webrwkv.safetensors import read_header

    stored = read_header(GOLDEN / f"{version}.st").tensors[name]
    nbytes = 4 * int(np.prod(shape))
    path = tmp_path / "m.st"
    if nbytes == stored.nbytes:
        edit_header(GOLDEN / f"{version}.st", path, shapes={name: shape})
    else:  # a different byte count: a new entry of that size at the end
        edit_header(GOLDEN / f"{version}.st", path, drop=[name], add={name: shape})
    _refused_quickly(path, f"'{name}'", f"shape {list(shape)}")


def test_missing_layout_tensor_is_named(tmp_path):
    """v7's layout rule reads blocks.0.att.w1: without it, the missing tensor is named (once: KeyError)."""
    path = edit_header(GOLDEN / "v7.st", tmp_path / "m.st", drop=["blocks.0.att.w1"])
    _refused_quickly(path, "'blocks.0.att.w1' is missing")


def test_info_command_refuses_a_bad_layer_index_without_a_traceback(tmp_path, capsys):
    from webrwkv.cli import main

    path = edit_header(GOLDEN / "v7.st", tmp_path / "m.st", add={"blocks.10000000.att.foo": (4,)})
    assert 500_000 < path.stat().st_size < 700_000  # the ~600 KB file of the report
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "without gaps" in err and "Traceback" not in err


@pytest.mark.parametrize("ids", ["99999999999999999999999", "1,-99999999999999999999999", "9223372036854775808"])
def test_logits_refuses_ids_too_large_for_any_vocabulary(tmp_path, capsys, ids):
    """An id beyond int64 once ended in an OverflowError traceback; it is outside the vocabulary like 300."""
    from webrwkv.cli import main

    out = tmp_path / "x.npy"
    with pytest.raises(SystemExit) as ei:
        main(["logits", "--model", str(GOLDEN / "v7.st"), "--tokens", ids, "--out", str(out)])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "outside the vocabulary" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["logits", "--model", str(GOLDEN / "v7.st"), "--tokens", "300", "--out", str(out)]) == 2
    assert "token id 300 is outside the vocabulary (0..255)" in capsys.readouterr().err
    assert main(["logits", "--model", str(GOLDEN / "v7.st"), "--tokens", "1,2", "--out", str(out)]) == 0
    assert np.load(out).shape == (256,)


@pytest.mark.parametrize("cut", ["in-data", "last-byte", "in-header"])
def test_browser_load_of_an_honestly_truncated_file_is_refused(cut):
    """What web/loader.js hands Python for a file cut short on the server, whose size it reports truly:
    the header's claims past the end are refused before any GPU buffer is made."""
    from webrwkv.browser_loader import StreamingLoad
    from webrwkv.errors import ModelFormatError

    data = (GOLDEN / "v7.st").read_bytes()
    n = int.from_bytes(data[:8], "little")
    size = {"in-data": 8 + n + 1000, "last-byte": len(data) - 1, "in-header": 8 + n // 2}[cut]
    words = "past the end" if cut == "in-header" else "truncated"
    dev = device()
    with pytest.raises(ModelFormatError, match=words):
        StreamingLoad(dev, data[: min(size, 8 + n)], size, "http://host/m.st", None)


def test_browser_load_whose_download_ends_early_is_refused():
    """Size hidden by CORS, so taken from the header; the bytes stop short: finish() refuses the load
    rather than hand over a runtime with tensors that never arrived."""
    import asyncio

    from webrwkv.browser_loader import StreamingLoad
    from webrwkv.errors import ModelFormatError

    data = (GOLDEN / "v7.st").read_bytes()
    n = int.from_bytes(data[:8], "little")
    dev = device()
    ld = StreamingLoad(dev, data[: 8 + n], -1, "http://host/m.st", None)
    assert ld.size == len(data)
    cut = len(data) // 2
    for a0, a1, buf, off, tag in ld.writes:
        if a1 > cut:
            continue  # these ranges never arrived
        staged = buf is None
        if staged:
            buf = dev.buffer(a1 - a0, label="staging")
        dev.write(buf, off, data[a0:a1])
        ld.write_done(tag, buf if staged else None)
    with pytest.raises(ModelFormatError, match="the download ended before"):
        asyncio.run(ld.finish())
