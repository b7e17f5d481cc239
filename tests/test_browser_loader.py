"""The browser's streamed load (raw file ranges -> GPU, conversions on the GPU) against the
native upload from numpy, on the native device: the same model must give identical logits."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from gpu_util import GOLDEN, VERSIONS, device

from webrwkv.browser_loader import GpuMatrix, PrefixSource, StreamingLoad
from webrwkv.layers import deferred, mat, pad_end, stack
from webrwkv.errors import ModelFormatError

MODELS = [*VERSIONS, "v6-bf16", *(f"{v}-converted" for v in VERSIONS)]


def stream(path, dev):
    """Do what web/loader.js does: fetch the header bytes, then write each planned range into its buffer."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    ld = StreamingLoad(dev, data[: 8 + n], len(data), path.as_uri(), None)
    seen = 0
    for a0, a1, buf, off, tag in ld.writes:
        assert a0 % 4 == 0 and a1 % 4 == 0 and off % 4 == 0 and a0 >= (ld.data_start & ~3)
        staged = buf is None
        if staged:  # JS makes a staging buffer for tensors that need a conversion
            buf = dev.buffer(a1 - a0, label="staging")
        chunk = data[a0:a1]
        dev.write(buf, off, chunk + b"\0" * (a1 - a0 - len(chunk)))
        ld.write_done(tag, buf if staged else None)
        seen += a1 - a0
    used = [r for r in ld.refs.values() if r.name in ld.segments] + [ld.refs[n] for n in ld.vec_spans]
    assert seen >= sum(r.nbytes for r in used)  # every byte the runtime uses is planned
    return ld


@pytest.mark.parametrize("name", MODELS)
def test_streamed_load_matches_native_upload(name):
    from webrwkv.models import load_weights
    from webrwkv.runtime import Runtime

    dev = device()
    rt, tok, info = asyncio.run(stream(GOLDEN / f"{name}.st", dev).finish())
    info2, w = load_weights(GOLDEN / f"{name}.st")
    strip = lambda d: {k: v for k, v in d.items() if k != "path"}  # noqa: E731
    assert strip(info.to_dict()) == strip(info2.to_dict())
    native = Runtime(dev, info2, w, tuning=rt.k.tuning)  # same kernels; only the upload path differs
    ids = [0, 17, 255, 3, 1000 % info.vocab, 42]
    rt.push(0, ids)
    native.push(0, ids)
    got, want = rt.run(all_logits=True)[0], native.run(all_logits=True)[0]
    assert got.shape == (len(ids), info.vocab)
    np.testing.assert_array_equal(got, want)  # same buffers, same kernels: bit-identical


@pytest.mark.parametrize("name,direct", [("v7-converted", True), ("v7", False), ("v6-bf16", False)])
def test_matrices_never_reach_python(name, direct):
    """Only per-channel vectors are read back; fp16 matrices go straight to their final buffers,
    fp32/bf16/transposed ones through a staging buffer and a GPU conversion."""
    dev = device()
    ld = stream(GOLDEN / f"{name}.st", dev)
    mats = {r.name for n, r in ld.refs.items() if len(r.canonical_shape) >= 2}
    assert set(ld.segments) <= mats and mats - set(ld.segments) <= {"blocks.0.att.v1", "blocks.0.att.v2"}  # v7
    # layer 0 has no value residual: its v1/v2 are never fetched
    assert not {ld.refs[n].name for n in ld.vec_spans} & mats
    vec_bytes = sum(ld.refs[n].nbytes for n in ld.vec_spans)
    mat_bytes = sum(ld.refs[n].nbytes for n in ld.refs if ld.refs[n].name in mats)
    assert vec_bytes < mat_bytes / 4
    runtime_bufs = {id(b) for *_, b, _, _ in [(s0, n, buf, d0, kp) for segs in ld.segments.values()
                                                 for s0, n, buf, d0, kp in segs]}
    direct_writes = [w for w in ld.writes if w[2] is not None and w[2] is not ld.vec_buf]
    assert all(id(w[2]) in runtime_bufs for w in direct_writes)
    assert bool(direct_writes) == direct
    ld.cancel()


def test_deferred_matrix_ops():
    """The layer toolkit's matrix helpers on GpuMatrix keep track of which rows land where."""
    class R:  # a stand-in raw tensor: only identity matters for the segment bookkeeping
        pass

    a, b = R(), R()
    A = GpuMatrix((4, 8), [(a, 0, 4, 0)])
    B = GpuMatrix((4, 8), [(b, 0, 4, 0)])
    assert deferred(A) and mat(A) is A and not deferred(np.ones((2, 2)))
    cat = stack([pad_end(A, 6, 8), B])
    assert cat.shape == (10, 8)
    assert cat.segs == [(a, 0, 4, 0), (b, 0, 4, 6)]
    three = GpuMatrix((12, 8), [(a, 0, 12, 0)]).reshape(3, 4, 8)
    assert three[2].shape == (4, 8) and three[2].segs == [(a, 8, 4, 0)]
    assert pad_end(A, 4, 16).shape == (4, 16)
    assert np.array_equal(stack([np.ones((1, 2)), np.zeros((1, 2))]), [[1, 1], [0, 0]])  # plain arrays too
    assert np.array_equal(pad_end(np.ones((1, 2)), 2, 3), [[1, 1, 0], [0, 0, 0]])
    with pytest.raises(ModelFormatError):
        A.reshape(8, 4)
    with pytest.raises(ModelFormatError):
        pad_end(A, 3, 8)


def test_prefix_source_errors_name_the_problem():
    from webrwkv.safetensors import read_header

    lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123456\n"
    with pytest.raises(ModelFormatError, match="Git LFS pointer"):
        read_header(PrefixSource(lfs, len(lfs), "model.st"))
    html = b"<!doctype html><html><body>Sign in</body></html>"
    with pytest.raises(ModelFormatError, match="web page"):
        read_header(PrefixSource(html, len(html), "model.st"))
    data = (GOLDEN / "v4.st").read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert PrefixSource(data[: 8 + n], -1, "v4.st").size == len(data)  # size from the header when hidden


@pytest.mark.parametrize("spec", ["v4:L5:C128", "v5:L5:C128", "v6:L5:C128", "v7:L5:C128"])
def test_kernels_recorded_from_three_blocks_are_those_of_every_block(spec, tmp_path):
    """The browser's dry run runs blocks 0, 1 and the last only: on five-block models of every version it
    records exactly the kernels (keys and sources) that running every block records, fp16 and int8."""
    from webrwkv.benchmark import parse_random, random_weights
    from webrwkv.browser_loader import record_kernels
    from webrwkv.models.loader import to_layout
    from webrwkv.safetensors import write_safetensors

    info = parse_random(spec)
    path = tmp_path / "m.st"
    write_safetensors(str(path), to_layout(info, random_weights(info, 0), "converted"),
                      metadata={"format": "pt", "layout": "converted"}, dtype="fp16")
    data = path.read_bytes()
    prefix = data[: 8 + int.from_bytes(data[:8], "little")]
    dev = device()
    for quant in ("none", "int8"):
        some = record_kernels(dev, prefix, len(data), path.as_uri(), None, quant)
        every = record_kernels(dev, prefix, len(data), path.as_uri(), None, quant, all_layers=True)
        assert len(every) > 10
        assert {k: r.wgsl for k, r in some.items()} == {k: r.wgsl for k, r in every.items()}


def test_browser_tuning_takes_64_threads_a_gemv_row_on_gpus_only():
    """The page's kernel tuning: one submit a step and one GEMV row a thread everywhere; 64 threads a GEMV row
    on a GPU (faster in Chromium on an H200), 32 on a software adapter; a page's override wins."""
    from webrwkv.browser_loader import _tuning
    from webrwkv.errors import ModelFormatError

    gpu, soft = _tuning(None), _tuning({}, software=True)
    assert (gpu.gemv_tpr, soft.gemv_tpr) == (64, 32)
    assert gpu.submit_ops == soft.submit_ops == 1 << 30 and gpu.gemv_mt_rows == soft.gemv_mt_rows == 1
    assert _tuning({"gemv_tpr": 16}).gemv_tpr == 16
    with pytest.raises(ModelFormatError, match="unknown kernel tuning knob"):
        _tuning({"gemv_tprr": 16})
