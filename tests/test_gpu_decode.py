"""Decode windows on the GPU (webrwkv.decode) against step-by-step decoding with the logits read back:
the same ids and the same state after greedy and sampled streams, after stop strings that end at every
position of a window, after a consumer that stops early, and for batches."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from gpu_util import GOLDEN, VERSIONS, device, fp16_model, state_rel

from webrwkv.batch import generate_batch
from webrwkv.generation import GenerationStats, generate_stream
from webrwkv.sampling import SamplerParams
from webrwkv.tokenizer import Tokenizer

GREEDY = SamplerParams(temperature=0)
SAMPLED = SamplerParams(temperature=0.9, top_p=0.9, top_k=50, presence_penalty=0.3, frequency_penalty=0.2, seed=5)


@functools.lru_cache(maxsize=None)
def runtime(version: str, depth: int = 2):
    """The model on the GPU, with `depth` decode windows in flight at most."""
    from webrwkv.kernels import Tuning
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    return Runtime(device(), info, w, max_batch=3, token_chunk_size=16, tuning=Tuning(windows_in_flight=depth))


def word(i: int) -> str:
    return chr(97 + i % 26) + chr(97 + i // 26 % 26)


@functools.lru_cache(maxsize=None)
def tokenizer(vocab: int) -> Tokenizer:
    """Every id decodes to its own two letters, so a stop string can end with any token."""
    return Tokenizer.from_text("\n".join(f"{i} {word(i)!r} 2" for i in range(1, vocab)), "test")


def stream(rt, prompt, params, n, stop=(), lookahead=8, slot=0, close_after=None):
    rt.reset(slot)
    tok = tokenizer(rt.info.vocab)
    items = []
    gen = generate_stream(rt, tok, prompt, params, n, stop, slot, eos_id=None, lookahead=lookahead)
    for item in gen:
        items.append(item)
        if close_after is not None and len(items) == close_after:
            gen.close()
            break
    return items, rt.get_state(slot)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_windows_equal_step_by_step(version, params):
    rt = runtime(version)
    prompt = np.random.default_rng(3).integers(1, rt.info.vocab, 21).tolist()
    want, want_state = stream(rt, prompt, params, 30, lookahead=0, slot=1)
    got, got_state = stream(rt, prompt, params, 30, lookahead=8, slot=1)
    assert [i for i in got[:-1]] == [i for i in want[:-1]] and got[-1].ids == want[-1].ids
    assert state_rel(got_state, want_state) == 0.0  # the same kernels ran the same tokens


@pytest.mark.parametrize("per", [1, 3, 64])
def test_steps_per_submit_leave_the_ids_and_state_of_step_by_step(per):
    """Windows of 1, 2, 4, 8 steps with `per` steps in each compute pass and submit (3: passes that end
    inside a window; 1: each step on its own)."""
    rt = runtime("v7")
    t = rt.k.tuning
    prompt = [11, 4, 29]
    want, want_state = stream(rt, prompt, SAMPLED, 19, lookahead=0)
    old, t.window_steps = t.window_steps, per
    try:
        got, got_state = stream(rt, prompt, SAMPLED, 19, lookahead=8)
    finally:
        t.window_steps = old
    assert got[:-1] == want[:-1] and got[-1].ids == want[-1].ids and len(got[-1].ids) == 19
    assert state_rel(got_state, want_state) == 0.0


@pytest.mark.parametrize("depth", [2, 4])
def test_stop_strings_ending_at_every_position_of_a_window(depth):
    """Windows of 1, 2, 4, 8, 8, ..., `depth` of them in flight (the browser's 4: a stop found in one
    leaves three run in vain): a stop string completed by each of the first 23 tokens; the stream, its
    text and the slot's state must be those of step-by-step decoding."""
    rt = runtime("v7", depth)
    assert rt.decoder.depth == depth and rt.decoder.max_window == 128 // depth
    prompt = [5, 30, 7]
    full, _ = stream(rt, prompt, SAMPLED, 24, lookahead=0)
    text = full[-1].text
    assert text == "".join(word(t) for t in full[-1].ids)
    for k in range(23):
        end = 2 * (k + 1)
        stop = text[max(0, end - 3): end]
        if text.find(stop) != end - len(stop):
            continue  # the string shows up earlier: not a stop at token k
        want, want_state = stream(rt, prompt, SAMPLED, 24, (stop,), lookahead=0)
        got, got_state = stream(rt, prompt, SAMPLED, 24, (stop,), lookahead=8)
        assert got[-1].stop_reason == "stop" and len(got[-1].ids) == k + 1
        assert got[:-1] == want[:-1] and got[-1].text == want[-1].text
        assert state_rel(got_state, want_state) == 0.0, k


@pytest.mark.parametrize("depth", [2, 4])
@pytest.mark.parametrize("after", [1, 2, 3, 6, 7, 13])
def test_closing_a_stream_early_leaves_the_state_of_what_was_shown(after, depth):
    rt = runtime("v6", depth)
    prompt = [9, 8, 7, 6]
    got, got_state = stream(rt, prompt, SAMPLED, 40, lookahead=8, close_after=after)
    want, want_state = stream(rt, prompt, SAMPLED, 40, lookahead=0, close_after=after)
    assert got == want and len(got) == after
    assert state_rel(got_state, want_state) == 0.0


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_batch_slots_equal_solo_streams(params):
    rt = runtime("v5")
    tok = tokenizer(rt.info.vocab)
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6], [5, 3, 5, 8, 9]]
    solo = []
    for s, p in enumerate(prompts):
        items, state = stream(rt, p, params, 20, lookahead=0, slot=s)
        solo.append((items[-1], state))
    stop = solo[1][0].text[4:6]  # slot 1 stops early (if that text shows up), the others may not
    solo = []
    for s, p in enumerate(prompts):
        items, state = stream(rt, p, params, 20, (stop,), lookahead=0, slot=s)
        solo.append((items[-1], state))
    for s in range(3):
        rt.reset(s)
    items = list(generate_batch(rt, tok, prompts, params, 20, (stop,), eos_id=None, lookahead=8))
    stats = items[-1]
    for s, (st, state) in enumerate(solo):
        assert stats.slots[s].ids == st.ids and stats.slots[s].text == st.text, s
        # batched steps run the GEMM kernels (several tokens a step), solo ones the GEMV: measured <= 5e-7
        assert state_rel(rt.get_state(s), state) < 1e-6, s
    assert any(st.stop_reason == "stop" for st, _ in solo)


def test_greedy_golden_ids_on_the_gpu_decoder():
    """The bundled model's greedy ids (the official package's, tests/golden/bundled_greedy.json) through
    the windows."""
    import json

    from webrwkv.engine import load_engine

    device()
    g = json.loads((GOLDEN / "bundled_greedy.json").read_text())
    eng = load_engine(None, "native")
    items = list(generate_stream(eng.runtime, eng.tokenizer, g["prompt_ids"], GREEDY, len(g["greedy_ids"]),
                                 eos_id=None, lookahead=16))
    assert isinstance(items[-1], GenerationStats) and items[-1].ids == g["greedy_ids"]


@pytest.mark.parametrize("lookahead", [1, 8])
def test_nan_logits_are_the_same_clear_error_on_the_gpu_paths(lookahead):
    """NaN weights: the GPU greedy and sampled windows raise the reference's 'NaN' SamplingError
    instead of picking token 0 and stopping as if at end of text."""
    from webrwkv.errors import SamplingError
    from webrwkv.reference import ReferenceRuntime
    from webrwkv.runtime import Runtime

    info, w = fp16_model("v7")
    w = dict(w, **{"head.weight": np.full_like(w["head.weight"], np.nan)})
    rt = Runtime(device(), info, w, max_batch=1, token_chunk_size=16)
    tok = tokenizer(info.vocab)
    for params in (GREEDY, SAMPLED):
        with pytest.raises(SamplingError, match="NaN"):
            list(generate_stream(rt, tok, [1, 2, 3], params, 4, (), 0, eos_id=0, lookahead=lookahead))
        with pytest.raises(SamplingError, match="NaN"):
            list(generate_stream(ReferenceRuntime((info, w)), tok, [1, 2, 3], params, 4, (), 0, eos_id=0))


@pytest.mark.parametrize("ahead_s, most", [(1e9, 4), (0.0, 2)])
def test_windows_in_flight_are_bounded_by_the_gpu_time_they_hold(monkeypatch, ahead_s, most):
    """Four windows may be in flight (the first four, 1 + 2 + 4 + 8 steps, go at once), but once a step's
    time is known (two windows read), no more are queued past the next read than generation.AHEAD_S of GPU
    time (always one): a slow GPU keeps a stream's end as close as with two. The ids are those of
    step-by-step decoding either way."""
    import webrwkv.generation as gen

    rt = runtime("v7", 4)
    dec = rt.decoder
    inflight, reads, peak = [0], [0], [0]
    submit, read_async = dec.submit, dec.read_async

    def counted_submit(*a, **k):
        inflight[0] += 1
        if reads[0] >= 2:
            peak[0] = max(peak[0], inflight[0])
        return submit(*a, **k)

    async def counted_read(w):
        out = await read_async(w)
        inflight[0] -= 1
        reads[0] += 1
        return out

    monkeypatch.setattr(dec, "submit", counted_submit)
    monkeypatch.setattr(dec, "read_async", counted_read)
    monkeypatch.setattr(gen, "AHEAD_S", ahead_s)
    prompt = [3, 14, 15]
    got, _ = stream(rt, prompt, SAMPLED, 40, lookahead=8)
    monkeypatch.undo()
    want, _ = stream(rt, prompt, SAMPLED, 40, lookahead=0)
    assert got[-1].ids == want[-1].ids and len(got[-1].ids) == 40
    assert peak[0] == most
