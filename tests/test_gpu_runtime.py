"""GPU runtime against the numpy reference and the official golden files, for every version."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from gpu_util import GOLDEN, VERSIONS, device, drain, fp16_model, one_by_one, rel, state_rel

from webrwkv import reference as ref

# GPU (fp16 matrices, f32 arithmetic) against the numpy reference on the same fp16-exact weights:
# measured at most 1.5e-6 relative L2 (v5, 150 tokens) on lavapipe
TOL = 5e-6


@functools.lru_cache(maxsize=None)
def runtime(version: str, max_batch: int = 1):
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    return Runtime(device(), info, w, max_batch=max_batch, token_chunk_size=128)


def prompt(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, 256, n).tolist()


@pytest.mark.parametrize("version", VERSIONS)
def test_long_prompt_every_chunk_size(version):
    info, w = fp16_model(version)
    toks = prompt(150)
    want, want_state = ref.forward(w, info, toks, all_logits=True)
    rt = runtime(version)
    for chunk in (1, 7, 32, 128):
        rt.reset(0)
        rt.token_chunk_size = chunk
        rt.push(0, toks)
        got = drain(rt, 0, all_logits=True)
        assert got.shape == want.shape
        assert rel(got, want) <= TOL, (chunk, rel(got, want))
        assert state_rel(rt.get_state(0), want_state) <= TOL, chunk
    rt.token_chunk_size = 128


def test_big_chunks_cap_all_logits_runs():
    """A 512-token chunk (the native default) prefills 300 tokens in one run, but a run asked for every
    token's logits takes at most 128 tokens (the logits buffer's rows); both match the reference."""
    from webrwkv.runtime import ALL_LOGITS_ROWS, Runtime

    info, w = fp16_model("v6")
    toks = prompt(300, seed=4)
    want, want_state = ref.forward(w, info, toks, all_logits=True)
    rt = Runtime(device(), info, w, max_batch=1, token_chunk_size=512)
    assert rt.logit_rows == ALL_LOGITS_ROWS == 128
    rt.push(0, toks)
    out = rt.run()
    assert rel(out[0], want[-1]) <= TOL and state_rel(rt.get_state(0), want_state) <= TOL
    rt.reset(0)
    rt.push(0, toks)
    runs, out = 0, {}
    while 0 not in out:
        out, runs = rt.run(all_logits=True), runs + 1
    assert runs == 3 and rel(out[0], want) <= TOL


@pytest.mark.parametrize("version", VERSIONS)
def test_token_by_token(version):
    info, w = fp16_model(version)
    toks = prompt(40, seed=1)
    want, _ = ref.forward(w, info, toks, all_logits=True)
    assert rel(one_by_one(runtime(version), toks), want) <= TOL


@pytest.mark.parametrize("version", VERSIONS)
def test_batched_matches_solo(version):
    rt = runtime(version, 4)
    prompts = [prompt(n, seed=n) for n in (1, 7, 33, 100)]
    rt.token_chunk_size = 32
    solo = []
    for p in prompts:
        rt.reset(0)
        rt.push(0, p)
        solo.append((drain(rt, 0), rt.get_state(0)))
    for s in range(4):
        rt.reset(s)
        rt.push(s, prompts[s])
    out = {}
    while len(out) < 4:
        out.update(rt.run())
    for s in range(4):
        assert rel(out[s], solo[s][0]) <= 2e-6, s  # measured <= 4.3e-7
        assert state_rel(rt.get_state(s), solo[s][1]) <= 2e-6, s
    rt.token_chunk_size = 128


@pytest.mark.parametrize("version", VERSIONS)
def test_state_round_trip(version):
    rt = runtime(version, 2)
    a, b = prompt(20, seed=2), prompt(9, seed=3)
    rt.reset(0)
    rt.push(0, a + b)
    whole = drain(rt, 0)
    rt.reset(0)
    rt.push(0, a)
    drain(rt, 0)
    saved = rt.get_state(0)
    rt.reset(0)
    rt.push(0, [5, 6, 7])
    drain(rt, 0)  # scribble over the slot
    rt.set_state(0, saved)
    rt.clone(0, 1)
    rt.push(0, b)
    rt.push(1, b)
    out = {}
    while len(out) < 2:
        out.update(rt.run())
    assert rel(out[0], whole) <= 1e-6  # measured <= 1.8e-7
    assert rel(out[1], whole) <= 1e-6


@pytest.mark.parametrize("version", VERSIONS)
def test_official_golden_logits(version):
    """fp16 checkpoints against the official package's logits (sequence and step mode) and state."""
    from webrwkv.models import load_weights
    from webrwkv.runtime import Runtime

    info, w = load_weights(GOLDEN / f"{version}-converted.st")
    gold = np.load(GOLDEN / f"{version}-fp16.npz")
    rt = Runtime(device(), info, w, max_batch=1, token_chunk_size=16)
    rt.push(0, gold["tokens"].tolist())
    assert rel(drain(rt, 0, all_logits=True), gold["seq_all"]) <= 3e-6  # measured <= 7.9e-7
    state = rt.get_state(0)
    for k in state:
        assert rel(state[k], gold["state:" + k]) <= 3e-6, k


def test_fp16_weight_arrays_upload_as_is():
    """Weights given already in fp16 (e.g. raw file bytes) run exactly like their float32 form."""
    from webrwkv.runtime import Runtime

    info, w = fp16_model("v7")
    half = {k: (v.astype(np.float16) if v.ndim == 2 else v) for k, v in w.items()}
    toks = prompt(12, seed=9)
    outs = []
    for weights in (w, half):
        rt = Runtime(device(), info, weights, max_batch=1, token_chunk_size=8)
        rt.push(0, toks)
        outs.append(drain(rt, 0))
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("version", VERSIONS)
def test_other_kernel_shapes_match(version):
    """Tuning knobs change work splits only: several channel blocks and row chunks per ln_mix,
    narrow GEMV rows and small GEMM tiles give the same numbers."""
    from webrwkv.kernels import Tuning
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    tu = Tuning(mix_wg=16, mix_rows=3, gemv_tpr=8, gemv_rows=2, gemv_unroll=2, gemm_tm=16,
                gemm_tn=32, submit_ops=5)
    rt = Runtime(device(), info, w, max_batch=2, token_chunk_size=16, tuning=tu)
    toks = prompt(41, seed=4)
    want, want_state = ref.forward(w, info, toks, all_logits=True)
    rt.push(1, toks)
    assert rel(drain(rt, 1, all_logits=True), want) <= TOL
    assert state_rel(rt.get_state(1), want_state) <= TOL
