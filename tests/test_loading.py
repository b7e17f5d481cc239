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
