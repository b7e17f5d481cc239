"""RWKV-7 DeepEmbed (models/v7de.py): detection, the numpy reference and the GPU against the official package run
with RWKV_DE_VERSION=1 (tests/golden/v7de*.npz from tools/make_golden.py), in sequence, step and batched modes;
shaders/deepembed.wgsl against the numpy function it implements; token tables split in row blocks."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from gpu_util import GOLDEN, device, drain, rel

from webrwkv import reference as ref
from webrwkv.errors import ModelFormatError
from webrwkv.models import detect_version, load_index, load_weights, v7de
from webrwkv.safetensors import read_header, read_tensor, write_safetensors
from webrwkv.sources import open_source

# (checkpoint, golden): fp32 weights against the package's fp32 logits; fp16 ones (exact on the GPU) against its
# logits on the same fp16-rounded weights
CASES = [("v7de", "v7de"), ("v7de-converted", "v7de-fp16")]
REF_TOL = 2e-6   # reference vs package: measured 5.7e-7 (sequence and step, logits and state)
GPU_TOL = 2e-6   # GPU (fp16-exact weights) vs package: measured at most 7.8e-7 (sequence, step, batched)


@functools.lru_cache(maxsize=None)
def model(name: str):
    return load_weights(GOLDEN / f"{name}.st")


def golden(name: str):
    return np.load(GOLDEN / f"{name}.npz")


def tensors(name: str) -> dict:
    with open_source(GOLDEN / f"{name}.st") as src:
        return {n: read_tensor(src, t) for n, t in read_header(src).tensors.items()}


def test_detected_from_its_tensor_names_with_its_matrix_size():
    info, refs = load_index(GOLDEN / "v7de.st")
    assert (info.version, info.dims["s"], info.dim_ffn) == ("v7de", 32, 256)
    assert refs["blocks.1.ffn.s_emb.weight"].canonical_shape == (256, 1024)
    assert refs["blocks.0.ffn.s1"].transform == "transpose" and refs["blocks.0.ffn.s1"].canonical_shape == (32, 64)
    assert refs["blocks.0.ffn.s2"].canonical_shape == (256, 32)
    names = set(read_header(open_source(GOLDEN / "v7de.st")).tensors)
    assert detect_version(names) == "v7de"
    assert detect_version({n for n in names if "s_emb" not in n}) == "v7"
    assert load_index(GOLDEN / "v7.st")[0].version == "v7"


def test_missing_or_misshapen_deepembed_tensors_are_named(tmp_path):
    t = tensors("v7de")
    bad = {k: v for k, v in t.items() if k != "blocks.1.ffn.s2"}
    write_safetensors(tmp_path / "a.st", bad)
    with pytest.raises(ModelFormatError, match=r"blocks\.1\.ffn\.s2' is missing"):
        load_index(tmp_path / "a.st")
    write_safetensors(tmp_path / "b.st", {**t, "blocks.0.ffn.s_emb.weight": t["blocks.0.ffn.s_emb.weight"][:, :1000]})
    with pytest.raises(ModelFormatError, match="32 x 32 matrix"):
        load_index(tmp_path / "b.st")


@pytest.mark.parametrize("ckpt,gold", CASES)
def test_reference_matches_the_official_package(ckpt, gold):
    info, w = model(ckpt)
    g = golden(gold)
    logits, state = ref.forward(w, info, g["tokens"], all_logits=True)
    assert rel(logits, g["seq_all"]) <= REF_TOL
    assert max(rel(state[k], g[f"state:{k}"]) for k in state) <= REF_TOL
    st, out = None, []
    for tok in g["tokens"]:
        lg, st = ref.step(w, info, int(tok), st)
        out.append(lg)
    assert rel(np.stack(out), g["step"]) <= REF_TOL


def test_the_table_matters():
    """Without its DeepEmbed scale the same weights are far from the package's logits (the test can fail)."""
    import dataclasses

    info, w = model("v7de")
    g = golden("v7de")
    plain, _ = ref.forward(w, dataclasses.replace(info, version="v7"), g["tokens"], all_logits=True)
    assert rel(plain, g["seq_all"]) > 0.1


def gpu_runtime(max_batch: int, chunk: int, dev=None):
    from webrwkv.runtime import Runtime

    info, w = model("v7de-converted")
    return Runtime(dev or device(), info, w, max_batch=max_batch, token_chunk_size=chunk)


def test_gpu_sequence_step_and_batched_match_the_official_package():
    g = golden("v7de-fp16")
    toks = g["tokens"].tolist()
    rt = gpu_runtime(3, 16)
    for chunk in (16, 5):  # GEMM prefill in chunks carrying the state
        rt.token_chunk_size = chunk
        rt.reset(0)
        rt.push(0, toks)
        assert rel(drain(rt, 0, all_logits=True), g["seq_all"]) <= GPU_TOL, chunk
        state = rt.get_state(0)
        assert max(rel(state[k], g[f"state:{k}"]) for k in state) <= GPU_TOL
    rt.reset(0)
    steps = []
    for t in toks:  # one token per step (GEMV)
        rt.push(0, [t])
        steps.append(drain(rt, 0))
    assert rel(np.stack(steps), g["step"]) <= GPU_TOL
    # three slots in the same steps, at different points of the sequence
    rt.token_chunk_size = 16
    for s in range(3):
        rt.reset(s)
    rt.push(0, toks)
    rt.push(1, toks[:7])
    rt.push(2, toks[:13])
    out: dict = {}
    while len(out) < 3:
        out.update(rt.run(all_logits=True))
    assert rel(out[0], g["seq_all"]) <= GPU_TOL
    assert rel(out[1], g["seq_all"][:7]) <= GPU_TOL and rel(out[2], g["seq_all"][:13]) <= GPU_TOL


def test_tables_split_in_row_blocks_give_the_same_logits():
    """A 256 KB binding limit cuts each 512 KB table in two; every token is looked up in its block."""
    from webrwkv.gpu import open_device

    small = open_device("native", max_binding_override=256 << 10)
    rt = gpu_runtime(1, 8, small)
    assert rt.split_matrices == 2  # the two layers' tables
    g = golden("v7de-fp16")
    rt.push(0, g["tokens"].tolist())
    assert rel(drain(rt, 0, all_logits=True), g["seq_all"]) <= GPU_TOL


def test_deepembed_kernel_equals_ffn_scale():
    """shaders/deepembed.wgsl on random inputs (two table blocks, odd token ids) against v7de.ffn_scale."""
    from webrwkv.formats import FP16
    from webrwkv.kernels import Kernels

    dev, rng = device(), np.random.default_rng(3)
    T, D, F, V, L, layer = 5, 32, 96, 40, 3, 1
    hid = rng.standard_normal((T, F + D)).astype(np.float32)
    table = (rng.standard_normal((V, D * D)) * 0.2).astype(np.float16)
    s2 = (rng.standard_normal((F, D)) * 0.2).astype(np.float16)
    s0 = rng.uniform(0.5, 1.5, F).astype(np.float32)
    demb = (rng.standard_normal((T, L * D * D)) * 0.1).astype(np.float32)
    toks = np.array([0, 39, 17, 22, 17], np.uint32)
    meta = np.zeros(16 + T, np.uint32)
    meta[0], meta[3] = T, 16
    meta[16:] = toks

    def buf(a):
        a = np.ascontiguousarray(a)
        b = dev.buffer(max(a.nbytes, 4))
        dev.write(b, 0, a)
        return b

    vecs = np.concatenate([np.zeros(8, np.float32), s0])
    mb, hb, s2b, vb, db = buf(meta), buf(hid), FP16.upload(dev, s2, "s2")[0][0][0], buf(vecs), buf(demb)
    k = Kernels(dev)
    for r0, nr in ((0, 20), (20, 20)):
        tb = FP16.upload(dev, table[r0: r0 + nr], "table")[0][0][0]
        pipe = k.get("deepembed", D=D, F=F, HS=F + D, WG=64, V0=r0, NV=nr, ROW=D * D // 2, S2ROW=D // 2, S0=8,
                     DE_TS=L * D * D, DE_OFF=layer * D * D)
        dev.encode([(pipe, dev.bind(pipe, [mb, tb, s2b, vb, db, hb]), (-(-F // 64), T, 1))])
    got = np.frombuffer(dev.read(hb, 0, hid.nbytes), np.float32).reshape(T, F + D)
    want = v7de.ffn_scale(hid[:, :F], hid[:, F:], table[toks].astype(np.float32),
                          demb[:, layer * D * D:(layer + 1) * D * D], s2.astype(np.float32), s0)
    assert rel(got[:, :F], want) < 1e-6  # measured 1.4e-7 (f32 sums in another order)
    assert np.array_equal(got[:, F:], hid[:, F:])  # s1 x' is read, not written
