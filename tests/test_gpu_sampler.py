"""The GPU sampler (shaders/sample.wgsl) against the numpy sampler (webrwkv.sampling): the same token on
constructed logits for every setting and edge case, the same distribution (chi-square), the clear error."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_util import device
from test_sampling import assert_matches

from webrwkv.decode import CAP, ERRORS, pack_params, pack_state, sample_pipeline, scratch_words, state_words
from webrwkv.errors import SamplingError
from webrwkv.kernels import Kernels
from webrwkv.sampling import Sampler, SamplerParams

def gpu_sample(logits: np.ndarray, samplers: list[Sampler], vocab: int | None = None,
               wg: int | None = None) -> tuple[list[int], list[int]]:
    """One dispatch: row i of `logits` sampled with samplers[i] (slot i). Returns (picks, error codes);
    the samplers' draw counters advance as the GPU's do."""
    dev = device()
    n, V = logits.shape
    tok0 = 8 + 4 * n  # where the kernel writes each row's next token in the metadata
    meta = np.zeros(tok0 + n, np.uint32)
    meta[1] = n
    for i in range(n):
        meta[8 + 4 * i: 11 + 4 * i] = (i, 1, i)
    stride = state_words(V)
    params = np.concatenate([pack_params(s, min(vocab or V, V)) for s in samplers])
    state = np.zeros(n * stride, np.uint32)
    for i, s in enumerate(samplers):
        head = pack_state(s, V)
        state[i * stride: i * stride + head.size] = head
    bufs = []
    for a in (meta, logits.astype(np.float32), params, state, np.zeros(n * (CAP + 2), np.uint32),
              np.zeros(n * scratch_words(V), np.float32)):
        b = dev.buffer(a.nbytes)
        dev.write(b, 0, a)
        bufs.append(b)
    pipe = sample_pipeline(Kernels(dev), V, tok0, wg)
    dev.encode([(pipe, dev.bind(pipe, bufs), (n, 1, 1))])
    m = np.frombuffer(dev.read(bufs[0], 0, meta.nbytes), np.uint32)
    ids = np.frombuffer(dev.read(bufs[4], 0, 4 * n * (CAP + 2)), np.uint32).reshape(n, CAP + 2)
    st = np.frombuffer(dev.read(bufs[3], 0, state.nbytes), np.uint32).reshape(n, stride)
    picks, errs = [], []
    for i, s in enumerate(samplers):
        errs.append(int(ids[i, 1]))
        if not errs[-1]:
            assert ids[i, 0] == 1 and m[tok0 + i] == ids[i, 2] and st[i, 0] == s.step + 1
            picks.append(int(ids[i, 2]))
            s.step += 1
            if s.params.presence_penalty or s.params.frequency_penalty:  # the counts as numpy keeps them
                s.accept(picks[-1])
                np.testing.assert_array_equal(st[i, 8: 8 + V].view(np.float32),
                                              np.asarray(pack_state(s, V)[8: 8 + V]).view(np.float32))
    return picks, errs


def cpu_sample(logits: np.ndarray, samplers: list[Sampler], vocab: int | None = None) -> list[int]:
    out = []
    for row, s in zip(logits, samplers):
        out.append(s.sample(row[:vocab] if vocab else row))
        if s.params.presence_penalty or s.params.frequency_penalty:
            s.accept(out[-1])
    return out


def both(logits: np.ndarray, params: SamplerParams, rounds: int = 3, vocab: int | None = None,
         history: tuple = (), wg: int | None = None) -> None:
    """GPU and numpy pick the same tokens, round after round (penalty counts carried along)."""
    n = logits.shape[0]
    gs = [Sampler(params, stream=i) for i in range(n)]
    cs = [Sampler(params, stream=i) for i in range(n)]
    for s in gs + cs:
        for t in history:
            s.accept(t)
    for _ in range(rounds):
        got, errs = gpu_sample(logits, gs, vocab, wg)
        assert not any(errs)
        assert got == cpu_sample(logits, cs, vocab)


def rows(n: int, V: int, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, V)) * scale).astype(np.float32)


@pytest.mark.parametrize("V,wg", [(1000, None), (300, None), (257, None), (65536, None), (1000, 1024)])
def test_settings_pick_the_numpy_token(V, wg):
    """Vocabularies not a multiple of the workgroup; the 1024-thread workgroup real GPUs get, once."""
    x = rows(6, V, V)
    for p in (SamplerParams(temperature=0), SamplerParams(top_k=1, temperature=2.0),
              SamplerParams(temperature=1.0, top_p=1.0, seed=1), SamplerParams(temperature=0.8, top_p=0.9, seed=2),
              SamplerParams(temperature=1.2, top_k=7, top_p=1.0, seed=3),
              SamplerParams(temperature=1.5, top_p=0.5, top_k=40, seed=4), SamplerParams(min_p=0.05, top_p=1.0, seed=5),
              SamplerParams(presence_penalty=0.7, frequency_penalty=0.4, penalty_decay=0.9, top_p=0.95, seed=6)):
        both(x, p, history=(3, 3, 5), wg=wg)


def test_ties_and_edges():
    V = 700
    x = np.full((4, V), -5.0, np.float32)
    x[0, [10, 20, 30]] = 4.0          # greedy: the lowest id among equal maxima
    x[1, [11, 500, 699]] = 4.0        # top-k 2 keeps all three tied weights; top-p likewise
    x[2, :] = 0.0                     # flat: every token
    x[3, :] = -np.inf
    x[3, 42] = 1.0                    # one finite logit
    both(x, SamplerParams(temperature=0))
    both(x, SamplerParams(top_k=2, top_p=1.0, seed=7), rounds=20)
    both(x, SamplerParams(top_p=0.3, seed=8), rounds=20)
    both(x, SamplerParams(temperature=1e-6, top_p=1.0, seed=9), rounds=10)  # near 0: among the maxima
    both(x, SamplerParams(temperature=0, banned=(10, 11, 0)))               # bans move the argmax
    both(x[:3], SamplerParams(top_p=0.9, seed=10), vocab=600, rounds=10)    # ids >= vocab never drawn


def test_every_token_banned_and_nan_logits_are_errors():
    x = rows(3, 300)
    x[1, 7] = np.nan
    x[2, 0] = np.inf
    s = [Sampler(SamplerParams(seed=1), i) for i in range(3)]
    _, errs = gpu_sample(x, s)
    assert errs == [0, 1, 1] and "NaN" in ERRORS[1]
    _, errs = gpu_sample(rows(1, 5), [Sampler(SamplerParams(banned=(0, 1, 2, 3, 4)))])
    assert errs == [2]
    with pytest.raises(SamplingError, match="NaN"):
        Sampler(SamplerParams()).sample(x[1])


@pytest.mark.parametrize("params", [dict(temperature=0.7, top_p=1.0), dict(temperature=1.0, top_p=0.6),
                                    dict(temperature=1.3, top_p=0.8, top_k=20), dict(min_p=0.1, top_p=1.0),
                                    dict(temperature=1.0, top_p=1.0, top_k=7)])
def test_gpu_distribution_matches_numpy(params):
    """10,240 GPU draws from one row (128 streams x 80 rounds) against the numpy sampler's distribution."""
    x = np.random.default_rng(123).normal(0, 2.0, 300).astype(np.float32)
    logits = np.tile(x, (128, 1))
    samplers = [Sampler(SamplerParams(**params, seed=99), stream=i) for i in range(128)]
    counts = np.zeros(300, np.int64)
    for _ in range(80):
        got, _ = gpu_sample(logits, samplers)
        np.add.at(counts, got, 1)
    assert_matches(counts, Sampler(SamplerParams(**params)).probs(x))
