"""Greedy decode on the GPU (Runtime.greedy and the argmax kernel) against numpy's argmax and the
step-by-step runtime, and generate_stream's lookahead against the plain stream."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from gpu_util import VERSIONS, device, drain, fp16_model, state_rel

from webrwkv.errors import WebRwkvError

ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def runtime(version: str):
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    return Runtime(device(), info, w, max_batch=2, token_chunk_size=32)


def argmax_on_gpu(logits: np.ndarray, nv: int) -> tuple[int, int, list[int]]:
    """Run the argmax kernel once on `logits` (row 0); returns (token written to the metadata, count, ids)."""
    from webrwkv.kernels import Kernels

    dev = device()
    meta, lg, ids = dev.buffer(64), dev.buffer(4 * logits.size), dev.buffer(4 * 8)
    dev.write(meta, 0, np.full(16, 99, np.uint32))
    dev.write(lg, 0, logits.astype(np.float32))
    dev.write(ids, 0, np.array([2, 5, 6, 0, 0, 0, 0, 0], np.uint32))  # two ids already listed
    pipe = Kernels(dev).get("argmax", V=nv, WG=256, TOK0=3)
    dev.encode([(pipe, dev.bind(pipe, [meta, lg, ids]), (1, 1, 1))])
    m = np.frombuffer(dev.read(meta, 0, 64), np.uint32)
    got = np.frombuffer(dev.read(ids, 0, 32), np.uint32)
    assert m[2] == 99 and m[4] == 99  # only the token entry changes
    return int(m[3]), int(got[0]), got[1:1 + int(got[0])].tolist()


@pytest.mark.parametrize("n", [1, 7, 300, 4097])
def test_argmax_kernel_matches_numpy(n):
    rng = np.random.default_rng(n)
    for trial in range(3):
        x = rng.standard_normal(n).astype(np.float32)
        if trial == 1 and n > 2:  # the maximum several times: the lowest index wins, as in numpy
            idx = rng.choice(n, size=3, replace=False)
            x[idx] = x.max() + 1
        if trial == 2:  # all -inf: the first id
            x[:] = -np.inf
        tok, count, ids = argmax_on_gpu(x, n)
        want = int(np.argmax(x))
        assert tok == want and count == 3 and ids == [5, 6, want]


def test_argmax_kernel_looks_only_at_the_first_vocab_ids():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    x[900] = 100.0
    tok, _, ids = argmax_on_gpu(x, 800)
    assert tok == int(np.argmax(x[:800])) and ids[-1] == tok


@pytest.mark.parametrize("version", VERSIONS)
def test_greedy_matches_step_by_step(version):
    rt = runtime(version)
    info = rt.info
    prompt = np.random.default_rng(3).integers(0, info.vocab, 40).tolist()
    for slot in (1, 0):
        rt.reset(slot)
        rt.push(slot, prompt)
        tok = int(np.argmax(drain(rt, slot)))
        start = rt.get_state(slot)
        want, t = [], tok
        for _ in range(12):
            rt.push(slot, [t])
            t = int(np.argmax(drain(rt, slot)))
            want.append(t)
        want_state = rt.get_state(slot)
        rt.set_state(slot, start)
        got = rt.greedy(slot, tok, 5)
        got += rt.greedy(slot, got[-1], 7)  # a second call goes on from the last id
        assert got == want
        assert state_rel(rt.get_state(slot), want_state) < 1e-6


def test_greedy_refuses_queued_input_and_bad_ids():
    rt = runtime("v7")
    rt.reset(0)
    rt.push(0, [1, 2])
    with pytest.raises(WebRwkvError, match="queued input"):
        rt.greedy(1, 3, 4)
    rt.reset(0)
    with pytest.raises(WebRwkvError, match="outside the vocabulary"):
        rt.greedy(0, rt.info.vocab, 4)
    with pytest.raises(WebRwkvError, match="n >= 1"):
        rt.greedy(0, 1, 0)
    with pytest.raises(WebRwkvError, match="does not exist"):
        rt.greedy(2, 1, 1)


def test_lookahead_stream_equals_the_plain_stream():
    from webrwkv.engine import load_engine
    from webrwkv.generation import GenerationStats, generate_stream
    from webrwkv.sampling import SamplerParams

    device()
    eng = load_engine(ROOT / "models" / "rwkv7-shakespeare.st", "native")
    rt, tok = eng.runtime, eng.tokenizer
    prompt = tok.encode("KING. Speak, what say you?\n")

    def run(lookahead: int, stop: tuple = (), max_tokens: int = 40):
        rt.reset(0)
        items = list(generate_stream(rt, tok, prompt, SamplerParams(temperature=0), max_tokens, stop,
                                     lookahead=lookahead))
        stats = items[-1]
        assert isinstance(stats, GenerationStats)
        return [i for i in items[:-1]], stats

    plain, ps = run(0)
    fast, fs = run(8)
    assert fast == plain and fs.ids == ps.ids and fs.text == ps.text and fs.stop_reason == "max_tokens"
    # a stop string met in the middle of a lookahead batch ends the stream at the same token
    word = ps.text.split()[3]
    plain, ps = run(0, (word,))
    fast, fs = run(16, (word,))
    assert ps.stop_reason == fs.stop_reason == "stop" and fs.ids == ps.ids and fs.text == ps.text
    assert fast == plain
