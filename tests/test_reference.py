"""The numpy reference against golden logits and states from the official rwkv package (tools/make_golden.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from webrwkv.errors import WebRwkvError
from webrwkv.models import init_state, load_weights
from webrwkv.reference import ReferenceRuntime, forward, step
from webrwkv.models import VERSIONS as REGISTRY

GOLDEN = Path(__file__).parent / "golden"
VERSIONS = sorted(REGISTRY)  # every version of the registry
# (checkpoint, golden logits): fp32 official files against logits of the fp32 weights; fp16
# converted files and the bf16 file against logits the package computed on the same rounded weights.
CASES = [(v, v) for v in VERSIONS] + [(f"{v}-converted", f"{v}-fp16") for v in VERSIONS] + [("v6-bf16", "v6-bf16")]
TOL = 2e-6  # measured at most 7.1e-7 (rel. L2) on every case


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


_cache: dict = {}


def model(name: str):
    if name not in _cache:
        _cache[name] = load_weights(GOLDEN / f"{name}.st")
    return _cache[name]


def golden(name: str):
    return np.load(GOLDEN / f"{name}.npz")


@pytest.mark.parametrize("ckpt,gold", CASES)
def test_sequence_mode_matches_official(ckpt, gold):
    info, w = model(ckpt)
    g = golden(gold)
    logits, state = forward(w, info, g["tokens"], all_logits=True)
    assert logits.shape == (len(g["tokens"]), info.vocab) and logits.dtype == np.float32
    assert rel(logits, g["seq_all"]) <= TOL
    last, _ = forward(w, info, g["tokens"])
    assert last.shape == (info.vocab,)
    assert rel(last, g["seq_last"]) <= TOL
    for name, arr in state.items():  # state layout: [h, key, value] for the kv matrices
        assert rel(arr, g[f"state:{name}"]) <= TOL, name


@pytest.mark.parametrize("ckpt,gold", CASES)
def test_step_mode_matches_official(ckpt, gold):
    info, w = model(ckpt)
    g = golden(gold)
    state, out = None, []
    for tok in g["tokens"]:
        logits, state = step(w, info, int(tok), state)
        out.append(logits)
    assert rel(np.stack(out), g["step"]) <= TOL
    for name, arr in state.items():
        assert rel(arr, g[f"state:{name}"]) <= TOL, name


@pytest.mark.parametrize("version", VERSIONS)
def test_chunks_with_state_equal_one_sequence(version):
    info, w = model(version)
    toks = golden(version)["tokens"]
    whole, s_whole = forward(w, info, toks, all_logits=True)
    a, s = forward(w, info, toks[:7], all_logits=True)
    b, s = forward(w, info, toks[7:], s, all_logits=True)
    assert rel(np.concatenate([a, b]), whole) <= 1e-6
    for name in s_whole:
        assert rel(s[name], s_whole[name]) <= 1e-6


def test_forward_does_not_modify_the_input_state():
    info, w = model("v7")
    s0 = init_state(info)
    _, s1 = forward(w, info, [1, 2, 3], s0)
    assert all(not np.any(v) for v in s0.values())
    assert any(np.any(v) for v in s1.values())


def test_bad_tokens_raise_project_errors():
    info, w = model("v5")
    with pytest.raises(WebRwkvError, match="outside the vocabulary"):
        forward(w, info, [1, info.vocab])
    with pytest.raises(WebRwkvError, match="no tokens"):
        forward(w, info, [])


def test_runtime_slots_match_forward():
    info, w = model("v6")
    toks = [int(t) for t in golden("v6")["tokens"]]
    rt = ReferenceRuntime((info, w), max_batch=3, token_chunk_size=8)
    rt.push(0, toks)
    rt.push(2, toks[:5])
    outs: dict = {}
    while rt.pending(0) or rt.pending(2):
        outs.update(rt.run(all_logits=True))
    assert rt.run() == {}
    full, state = forward(w, info, toks, all_logits=True)
    assert rel(outs[0], full) <= 1e-6 and outs[0].shape == (len(toks), info.vocab)
    assert rel(outs[2], full[:5]) <= 1e-6
    assert rel(rt.get_state(0)["blocks.1.att_kv"], state["blocks.1.att_kv"]) <= 1e-6
    assert 1 not in outs


def test_runtime_state_get_set_clone_reset():
    info, w = model("v7")
    toks = [int(t) for t in golden("v7")["tokens"]]
    rt = ReferenceRuntime((info, w), max_batch=2)
    rt.push(0, toks[:10])
    rt.run()
    saved = rt.get_state(0)
    rt.clone(0, 1)
    rt.push(0, toks[10:])
    rt.push(1, toks[10:])
    out = asyncio.run(rt.run_async())
    assert rel(out[1], out[0]) <= 1e-7
    assert rel(out[0], forward(w, info, toks)[0]) <= 1e-6
    rt.set_state(0, saved)
    rt.push(0, toks[10:])
    assert rel(rt.run()[0], out[0]) <= 1e-7
    rt.reset(1)
    assert all(not np.any(v) for v in asyncio.run(rt.get_state_async(1)).values())
    with pytest.raises(WebRwkvError, match="att_kv"):
        rt.set_state(0, dict(saved, **{"blocks.1.att_kv": saved["blocks.1.att_kv"][..., :1]}))
    with pytest.raises(WebRwkvError, match="slot"):
        rt.push(2, [1])


def test_v4_initial_pp_is_minus_1e38():
    info, _ = model("v4")
    s = init_state(info)
    assert np.all(s["blocks.0.att_pp"] == np.float32(-1e38)) and not np.any(s["blocks.0.att_aa"])


def test_runtime_spends_token_chunk_size_per_run():
    rt = ReferenceRuntime(GOLDEN / "v5.st", max_batch=2, token_chunk_size=8)
    rt.push(0, list(range(10)))
    rt.push(1, list(range(10)))
    assert rt.run() == {}
    assert (rt.pending(0), rt.pending(1)) == (6, 6)
    rt.run()
    out = rt.run()  # the last 2 + 2 tokens: both slots run out
    assert sorted(out) == [0, 1] and out[0].shape == (rt.info.vocab,)
    assert rel(out[0], forward(rt.weights, rt.info, list(range(10)))[0]) <= 1e-6
