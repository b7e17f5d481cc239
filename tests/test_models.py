"""Model definitions and loader: detection, both layouts, dtypes, canonical shapes, state layout, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from webrwkv.errors import ModelFormatError, SourceError, WebRwkvError
from webrwkv.models import (ModelInfo, default_model_path, detect_version, init_state, load_index, load_weights,
                            state_layout)
from webrwkv.reference import forward
from webrwkv.safetensors import read_header, read_tensor, write_safetensors
from webrwkv.models import VERSIONS as REGISTRY

GOLDEN = Path(__file__).parent / "golden"
VERSIONS = sorted(REGISTRY)  # every version of the registry
FFN = {"v4": 256, "v5": 256, "v6": 224, "v7": 256, "v7de": 256}
DIMS = {"v4": {}, "v5": {}, "v6": {"time_maa": 16, "time_decay": 32}, "v7": {"w": 16, "a": 16, "v": 8, "g": 32},
        "v7de": {"w": 16, "a": 16, "v": 8, "g": 32, "s": 32}}


class MemorySource:
    """A byte source over bytes in memory, like an HTTP range source."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name, self.size, self.reads = data, name, len(data), 0

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return self.data[offset:offset + length]


def rewrite(src: Path, dst: Path, drop=(), change=None) -> Path:
    """Copy a safetensors file, dropping tensors or replacing some arrays (dtypes kept)."""
    with open(src, "rb") as f:
        data = f.read()
    hdr = read_header(MemorySource(data, str(src)))
    arrays, dtypes = {}, {}
    for name, t in hdr.tensors.items():
        if name in drop:
            continue
        arrays[name] = read_tensor(MemorySource(data, str(src)), t)
        dtypes[name] = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}[t.dtype]
    arrays.update(change or {})
    write_safetensors(dst, arrays, metadata=hdr.metadata, dtype=dtypes)
    return dst


@pytest.mark.parametrize("version", VERSIONS)
def test_info_and_version_for_both_layouts(version):
    for name, layout, dtype in ((version, "official", "fp32"), (f"{version}-converted", "converted", "fp16")):
        info, refs = load_index(GOLDEN / f"{name}.st")
        expect_layout = "official" if version == "v4" else layout  # v4 names are the same in both layouts
        heads = (1, 64) if version == "v4" else (2, 32)
        assert (info.version, info.n_layer, info.n_embd, info.vocab) == (version, 2, 64, 256)
        assert (info.n_head, info.head_size, info.dim_ffn, info.dims) == (*heads, FFN[version], DIMS[version])
        assert (info.layout, info.dtype) == (expect_layout, dtype)
        assert info.nbytes == (GOLDEN / f"{name}.st").stat().st_size
        assert detect_version(read_header(MemorySource((GOLDEN / f"{name}.st").read_bytes(), name)).tensors) == version


@pytest.mark.parametrize("version", VERSIONS)
def test_official_and_converted_give_the_same_canonical_weights(version):
    info, w = load_weights(GOLDEN / f"{version}.st")
    info_c, wc = load_weights(GOLDEN / f"{version}-converted.st")
    assert sorted(w) == sorted(wc)
    for name in w:
        assert w[name].dtype == np.float32 and w[name].shape == wc[name].shape, name
        # the converted copy is the official weights rounded to fp16
        assert np.array_equal(w[name].astype(np.float16).astype(np.float32), wc[name]), name


def test_canonical_shapes_and_transforms():
    _, refs = load_index(GOLDEN / "v6.st")
    r = refs["blocks.0.att.time_maa_w2"]
    assert (r.shape, r.canonical_shape, r.transform) == ((5, 16, 64), (5, 64, 16), "transpose")
    r = refs["blocks.1.att.time_maa_w1"]
    assert (r.shape, r.canonical_shape, r.transform) == ((64, 80), (80, 64), "transpose")
    r = refs["blocks.0.att.time_decay"]
    assert (r.shape, r.canonical_shape, r.transform) == ((1, 1, 64), (64,), "reshape")
    assert refs["blocks.0.att.key.weight"].transform == "none"
    _, refs = load_index(GOLDEN / "v6-converted.st")
    r = refs["blocks.0.att.time_maa_w2"]
    assert (r.name, r.shape, r.transform, r.dtype) == ("blocks.0.att.time_mix_w2", (5, 64, 16), "none", "F16")
    assert refs["blocks.0.att.time_faaaa"].name == "blocks.0.att.time_first"
    _, refs = load_index(GOLDEN / "v7.st")
    assert refs["blocks.1.att.g1"].canonical_shape == (32, 64) and refs["blocks.1.att.g1"].transform == "transpose"
    assert refs["blocks.0.att.r_k"].canonical_shape == (64,)


def test_tensor_refs_point_at_the_stored_bytes():
    data = (GOLDEN / "v5.st").read_bytes()
    _, refs = load_index(GOLDEN / "v5.st")
    _, w = load_weights(GOLDEN / "v5.st")
    r = refs["blocks.1.att.time_faaaa"]
    raw = np.frombuffer(data[r.offset:r.offset + r.nbytes], dtype="<f4")
    assert r.shape == (2, 32) and np.array_equal(raw, w["blocks.1.att.time_faaaa"])


def test_loads_from_any_byte_source_and_bf16():
    src = MemorySource((GOLDEN / "v6-bf16.st").read_bytes(), "mem://v6-bf16.st")
    info, w = load_weights(src)
    assert (info.dtype, info.path) == ("bf16", "mem://v6-bf16.st")
    _, w32 = load_weights(GOLDEN / "v6.st")
    for name in w:  # bf16 keeps 8 bits of mantissa: within 2^-8 relative of the fp32 weights
        assert np.allclose(w[name], w32[name], rtol=2 ** -8, atol=0), name


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    bad = rewrite(GOLDEN / "v5.st", tmp_path / "a.st", drop={"blocks.1.att.key.weight"})
    with pytest.raises(ModelFormatError, match=r"blocks\.1\.att\.key\.weight"):
        load_index(bad)
    bad = rewrite(GOLDEN / "v6-converted.st", tmp_path / "b.st", drop={"blocks.1.att.time_mix_w"})
    with pytest.raises(ModelFormatError, match=r"'blocks\.1\.att\.time_mix_w' is missing"):
        load_index(bad)
    bad = rewrite(GOLDEN / "v7.st", tmp_path / "c.st", change={"blocks.1.ffn.value.weight": np.zeros((64, 100))})
    with pytest.raises(ModelFormatError, match=r"blocks\.1\.ffn\.value\.weight.*\[64, 100\]"):
        load_index(bad)
    bad = rewrite(GOLDEN / "v4.st", tmp_path / "d.st", drop={n for n in read_header_names("v4") if "time_" in n})
    with pytest.raises(ModelFormatError, match="cannot tell the RWKV version"):
        load_index(bad)
    with pytest.raises(SourceError, match="no such file"):  # a .pth is read like any model file now
        load_index(tmp_path / "x.pth")


def read_header_names(name: str) -> list:
    return list(read_header(MemorySource((GOLDEN / f"{name}.st").read_bytes(), name)).tensors)


def test_v7_layer0_value_residual_tensors_are_optional(tmp_path):
    drop = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    path = rewrite(GOLDEN / "v7.st", tmp_path / "v7.st", drop=drop)
    info, w = load_weights(path)
    info0, w0 = load_weights(GOLDEN / "v7.st")
    assert not drop & set(w) and info.dims == info0.dims
    toks = [5, 17, 200, 3]
    assert np.array_equal(forward(w, info, toks)[0], forward(w0, info0, toks)[0])


@pytest.mark.parametrize("version", VERSIONS)
def test_state_layout(version):
    info, _ = load_index(GOLDEN / f"{version}.st")
    layout = state_layout(info)
    if version == "v4":
        assert layout[:5] == [("blocks.0.att_x", (64,)), ("blocks.0.att_aa", (64,)), ("blocks.0.att_bb", (64,)),
                              ("blocks.0.att_pp", (64,)), ("blocks.0.ffn_x", (64,))]
    else:
        assert layout[:3] == [("blocks.0.att_x", (64,)), ("blocks.0.att_kv", (2, 32, 32)), ("blocks.0.ffn_x", (64,))]
    assert len(layout) == (5 if version == "v4" else 3) * info.n_layer
    state = init_state(info)
    assert [(k, v.shape) for k, v in state.items()] == layout
    assert all(v.dtype == np.float32 for v in state.values())


def test_default_model_path(monkeypatch, tmp_path):
    monkeypatch.setenv("WEBRWKV_MODEL", str(GOLDEN / "v7.st"))
    assert default_model_path() == str(GOLDEN / "v7.st")
    monkeypatch.setenv("WEBRWKV_MODEL", str(tmp_path / "none.st"))
    with pytest.raises(WebRwkvError, match="WEBRWKV_MODEL"):
        default_model_path()
    monkeypatch.delenv("WEBRWKV_MODEL")
    bundled = sorted((Path(__file__).parents[1] / "models").glob("*.st"))
    if bundled:
        assert default_model_path() == str(bundled[0])
    else:
        with pytest.raises(WebRwkvError, match="no bundled model"):
            default_model_path()


def test_model_info_to_dict():
    info, _ = load_index(GOLDEN / "v7.st")
    d = info.to_dict()
    assert isinstance(info, ModelInfo) and d["version"] == "v7" and d["dims"]["g"] == 32
