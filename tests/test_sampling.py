"""Sampling: the drawn distribution against an independent numpy computation, penalties, seeds, stops."""

import math

import numpy as np
import pytest

from webrwkv.sampling import Sampler, SamplerParams, SamplingError, StopMatcher

N_DRAWS = 20000


def expected_dist(logits, temperature=1.0, top_p=1.0, top_k=0):
    """Independent reference: full sort, nucleus on the untempered softmax, then p ** (1/T)."""
    x = np.asarray(logits, dtype=np.float64)
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(len(p), dtype=bool)
    if top_k > 0:
        keep[order[:top_k]] = True
    else:
        keep[:] = True
    if top_p < 1.0:
        csum = np.cumsum(p[order])
        n_nucleus = int(np.argmax(csum >= top_p)) + 1  # smallest prefix reaching top_p
        nucleus = np.zeros(len(p), dtype=bool)
        nucleus[order[:n_nucleus]] = True
        keep &= nucleus
    q = np.where(keep, p ** (1.0 / temperature), 0.0)
    return q / q.sum()


def chi2_critical(df, z=4.75):
    """Wilson-Hilferty upper quantile of chi-square(df); z=4.75 is a 1e-6 one-sided level."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def draw_counts(params, logits, n=N_DRAWS):
    s = Sampler(params)
    counts = np.zeros(len(logits), dtype=np.int64)
    for _ in range(n):
        counts[s.sample(logits)] += 1
    return counts


def assert_matches(counts, expected):
    """Zero draws outside the support, and a chi-square goodness-of-fit test inside it."""
    n = counts.sum()
    assert counts[expected == 0].sum() == 0, "a token outside the candidate set was drawn"
    support = expected > 0
    e = expected[support] * n
    chi2 = float(((counts[support] - e) ** 2 / e).sum())
    df = int(support.sum()) - 1
    if df > 0:
        assert chi2 < chi2_critical(df), f"chi2={chi2:.1f} df={df}"
    # and a per-token bound (5.5 sigma, Bonferroni-safe for these sizes)
    f = counts[support] / n
    sigma = np.sqrt(expected[support] * (1 - expected[support]) / n)
    assert np.all(np.abs(f - expected[support]) <= 5.5 * sigma + 1e-12)


@pytest.fixture
def logits():
    return np.random.default_rng(123).normal(0, 2.0, 300).astype(np.float32)


def test_temperature_matches_softmax(logits):
    t = 0.7
    params = SamplerParams(temperature=t, top_p=1.0, seed=1)
    x = logits.astype(np.float64) / t
    expected = np.exp(x - x.max())
    expected /= expected.sum()
    np.testing.assert_allclose(Sampler(params).probs(logits), expected, rtol=1e-9, atol=1e-15)
    small = logits[:12].astype(np.float64)  # a small vocabulary so every token has enough draws
    exp_small = np.exp(small / t - (small / t).max())
    assert_matches(draw_counts(params, small), exp_small / exp_small.sum())


def test_top_p_distribution(logits):
    params = SamplerParams(temperature=1.0, top_p=0.6, seed=2)
    exp = expected_dist(logits, top_p=0.6)
    assert 3 < (exp > 0).sum() < 60  # a non-trivial nucleus
    np.testing.assert_allclose(Sampler(params).probs(logits), exp, rtol=1e-9, atol=1e-15)
    assert_matches(draw_counts(params, logits), exp)


def test_top_k_distribution(logits):
    params = SamplerParams(temperature=1.0, top_p=1.0, top_k=7, seed=3)
    exp = expected_dist(logits, top_k=7)
    assert (exp > 0).sum() == 7
    assert_matches(draw_counts(params, logits), exp)


def test_top_p_top_k_temperature_combined(logits):
    params = SamplerParams(temperature=1.6, top_p=0.8, top_k=20, seed=4)
    exp = expected_dist(logits, temperature=1.6, top_p=0.8, top_k=20)
    np.testing.assert_allclose(Sampler(params).probs(logits), exp, rtol=1e-9, atol=1e-15)
    assert_matches(draw_counts(params, logits), exp)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dist", ["flat", "normal", "wide", "heavy"])
def test_candidates_match_full_sort(dist, dtype):
    # World-sized vocabularies: nuclei from one token to tens of thousands; float32 logits are
    # filtered in float32, and the result must still be the float64 answer for those values
    rng = np.random.default_rng(5)
    x = {"flat": rng.normal(0, 0.3, 65536), "normal": rng.normal(0, 1, 65536),
         "wide": rng.normal(0, 3, 65536), "heavy": rng.standard_cauchy(65536)}[dist].astype(dtype)
    for top_p, top_k in ((0.05, 0), (0.5, 0), (0.95, 0), (1.0, 50), (0.9, 200), (0.3, 5000)):
        exp = expected_dist(x.astype(np.float64), top_p=top_p, top_k=top_k)
        got = Sampler(SamplerParams(top_p=top_p, top_k=top_k)).probs(x)
        assert (got > 0).sum() == (exp > 0).sum()
        np.testing.assert_allclose(got, exp, rtol=1e-9, atol=1e-15)


def test_greedy_is_argmax(logits):
    s = Sampler(SamplerParams(temperature=0.0, seed=0))
    assert all(s.sample(logits) == int(np.argmax(logits)) for _ in range(20))
    assert Sampler(SamplerParams(top_k=1, temperature=2.0)).sample(logits) == int(np.argmax(logits))


def test_penalties_hand_computed():
    params = SamplerParams(presence_penalty=0.3, frequency_penalty=0.2, penalty_decay=0.5)
    s = Sampler(params)
    for t in (2, 2, 5):
        s.accept(t)
    # token 2: 1 -> 0.5 + 1 = 1.5 -> 0.75; token 5: 1
    assert s.occurrences() == {2: 0.75, 5: 1.0}
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    want = x.copy()
    want[2] -= 0.3 + 0.2 * 0.75
    want[5] -= 0.3 + 0.2 * 1.0
    np.testing.assert_allclose(s.adjust(x), want, rtol=0, atol=1e-12)
    s.reset()
    np.testing.assert_array_equal(s.adjust(x), x)


def test_penalties_change_greedy_choice():
    x = np.array([0.0, 3.0, 2.5, 1.0])
    s = Sampler(SamplerParams(temperature=0, frequency_penalty=1.0, penalty_decay=1.0))
    picks = [s(x) for _ in range(4)]
    # 1 (3.0) -> then 3.0-1=2.0 < 2.5 -> 2 -> 2.5-1=1.5 < 2.0 -> 1 -> 1.0 vs 1.5 -> 2
    assert picks == [1, 2, 1, 2]


def test_penalties_grow_beyond_pool():
    s = Sampler(SamplerParams(presence_penalty=1.0, penalty_decay=1.0))
    for t in range(200):
        s.accept(t)
    adj = s.adjust(np.zeros(300))
    assert np.all(adj[:200] == -1.0) and np.all(adj[200:] == 0.0)


def test_banned_tokens(logits):
    top = int(np.argmax(logits))
    s = Sampler(SamplerParams(temperature=0, banned=(top,)))
    assert s.sample(logits) == int(np.argsort(-logits)[1])
    counts = draw_counts(SamplerParams(top_p=1.0, banned=(top, 0), seed=9), logits, n=2000)
    assert counts[top] == 0 and counts[0] == 0
    with pytest.raises(SamplingError, match="banned"):
        Sampler(SamplerParams(banned=(0, 1, 2, 7))).sample(np.zeros(3))
    assert Sampler(SamplerParams(temperature=0, banned=(1, 99))).sample(np.array([0.0, 2.0, 1.0])) == 2


def test_invalid_logits():
    for bad in (np.nan, np.inf):
        with pytest.raises(SamplingError, match="NaN or infinity"):
            Sampler(SamplerParams()).sample(np.array([0.0, bad, 1.0]))


def test_seed_reproducible(logits):
    params = SamplerParams(temperature=1.2, top_p=0.95, seed=42)
    a = [Sampler(params).sample(logits) for _ in range(1)]
    s1, s2, s3 = Sampler(params), Sampler(params), Sampler(params.with_seed(43))
    seq1 = [s1(logits) for _ in range(50)]
    assert seq1 == [s2(logits) for _ in range(50)]
    assert seq1 != [s3(logits) for _ in range(50)]
    assert a[0] == seq1[0]


@pytest.mark.parametrize("bad", [
    dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2), dict(penalty_decay=1.5),
])
def test_invalid_params(bad):
    with pytest.raises(SamplingError):
        SamplerParams(**bad).validate()


def stream(matcher, text, cuts):
    out, pieces = [], []
    last = 0
    for c in list(cuts) + [len(text)]:
        piece = matcher.feed(text[last:c])
        pieces.append(piece)
        out.append(piece)
        last = c
        if matcher.stopped:
            break
    out.append(matcher.flush())
    return "".join(out), pieces


@pytest.mark.parametrize("seed", range(20))
def test_stop_matcher_random_splits(seed):
    rng = np.random.default_rng(seed)
    text = "Hello there.\nUs here\n\nUser: more text"
    cuts = sorted(rng.choice(np.arange(1, len(text)), size=rng.integers(1, 10), replace=False))
    m = StopMatcher(["\nUser:", "\n\n"])
    out, pieces = stream(m, text, cuts)
    assert out == "Hello there.\nUs here" and m.stopped and m.matched == "\n\n"
    shown = ""
    for p in pieces:  # what was streamed never ends in a partial stop string beyond the answer
        shown += p
        assert "Hello there.\nUs here".startswith(shown)


def test_stop_matcher_holds_and_releases():
    m = StopMatcher(["\nUser:"])
    assert m.feed("abc\nUs") == "abc"
    assert m.held == "\nUs"
    assert m.feed("ual") == "\nUsual"
    assert m.feed("\n") == ""
    assert m.flush() == "\n" and not m.stopped


def test_stop_matcher_earliest_stop_wins():
    m = StopMatcher(["World", "lo"])
    assert m.feed("Hello World") == "Hel" and m.matched == "lo"
    assert m.feed("more") == ""
    assert StopMatcher([]).feed("anything\n\n") == "anything\n\n"
