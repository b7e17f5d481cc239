"""Token sampling in numpy: temperature, top-p, top-k, RWKV-style penalties, banned tokens, stop strings.

Order of operations (as in the official RWKV pipeline): penalties and bans change the
logits; top-k and top-p choose the candidates from the resulting distribution; the
temperature then reshapes the distribution over those candidates (p ** (1 / T)).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

from .errors import SamplingError

__all__ = ["SamplerParams", "Sampler", "SamplingError", "StopMatcher", "top_p_candidates"]


@dataclass
class SamplerParams:
    """Everything that decides how a token is drawn from the logits."""

    temperature: float = 1.0       # 0 means greedy (argmax)
    top_p: float = 0.85            # 1.0 disables top-p
    top_k: int = 0                 # 0 disables top-k
    presence_penalty: float = 0.0  # subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted per (decayed) occurrence
    penalty_decay: float = 0.996   # occurrence counts are multiplied by this every step
    seed: int | None = None
    banned: tuple[int, ...] = field(default_factory=tuple)

    def validate(self) -> "SamplerParams":
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}; use 0 for greedy")
        if not (0.0 < self.top_p <= 1.0):
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}; use 1 to disable it")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0, got {self.top_k}; use 0 to disable it")
        if not (0.0 <= self.penalty_decay <= 1.0):
            raise SamplingError(f"penalty_decay must be in [0, 1], got {self.penalty_decay}")
        return self

    @classmethod
    def from_args(cls, args: object, banned: Iterable[int] = ()) -> "SamplerParams":
        """Build from an argparse namespace carrying the CLI sampling options."""
        return cls(
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
            penalty_decay=args.penalty_decay, seed=args.seed, banned=tuple(banned),
        ).validate()

    def with_seed(self, seed: int | None) -> "SamplerParams":
        return replace(self, seed=seed)


def top_p_candidates(weights: np.ndarray, top_p: float, top_k: int = 0, total: float | None = None,
                     wmax: float | None = None) -> np.ndarray:
    """Indices of the tokens kept by top-k and top-p, given probabilities (or weights summing to
    `total`, largest `wmax`).

    Top-p keeps the smallest set of most likely tokens whose mass reaches top_p. The
    indices come in no particular order. Nothing is sorted but a band of the head: a
    threshold falls eightfold per try (one vectorised compare) until the tokens above
    it hold the top-k tokens or the top-p mass; those above the previous threshold are
    surely kept, and only the band between the two is sorted.
    """
    n = weights.shape[0]
    limit = n if top_k <= 0 else min(top_k, n)
    if top_p >= 1.0 and limit == n:
        return np.arange(n)
    total = float(weights.sum(dtype=np.float64)) if total is None else total
    target = top_p * (1 - 1e-12) * total
    t, prev = float(weights.max() if wmax is None else wmax) / 8, np.inf
    for _ in range(12):
        idx = np.flatnonzero(weights >= t)
        if len(idx) >= limit or (top_p < 1.0 and weights[idx].sum(dtype=np.float64) >= target):
            break
        prev, t = t, t / 8
    else:
        idx = np.arange(n)
    if len(idx) >= limit:  # top-k binds: the `limit` best, sorted, then their top-p prefix
        if len(idx) > limit:
            idx = idx[np.argpartition(-weights[idx], limit - 1)[:limit]]
        idx = idx[np.argsort(-weights[idx], kind="stable")]
        if top_p < 1.0:
            idx = idx[: int(np.searchsorted(np.cumsum(weights[idx], dtype=np.float64), target)) + 1]
        return idx
    sure = weights[idx] >= prev  # their mass is below the target: all in the nucleus
    band = idx[~sure]
    band = band[np.argsort(-weights[band], kind="stable")]
    need = target - float(weights[idx[sure]].sum(dtype=np.float64))
    cut = int(np.searchsorted(np.cumsum(weights[band], dtype=np.float64), need)) + 1
    return np.concatenate([idx[sure], band[:cut]])


class Sampler:
    """Draws tokens from logits; keeps the penalty counters and the random generator."""

    def __init__(self, params: SamplerParams | None = None):
        self.params = (params or SamplerParams()).validate()
        self.rng = np.random.default_rng(self.params.seed)
        self.reset()

    def reset(self) -> None:
        """Forget the occurrence counters (the random stream goes on)."""
        self._pos: dict[int, int] = {}
        self._ids = np.zeros(64, dtype=np.int64)
        self._counts = np.zeros(64, dtype=np.float64)

    def occurrences(self) -> dict[int, float]:
        """Current (decayed) occurrence count per generated token."""
        return {t: float(self._counts[i]) for t, i in self._pos.items()}

    def adjust(self, logits: np.ndarray) -> np.ndarray:
        """Logits after penalties and bans (a copy: float32 stays float32, anything else is float64)."""
        p = self.params
        logits = np.asarray(logits)
        out = np.array(logits, dtype=np.float32 if logits.dtype == np.float32 else np.float64).reshape(-1)
        n = len(self._pos)
        if n and (p.presence_penalty or p.frequency_penalty):
            out[self._ids[:n]] -= p.presence_penalty + p.frequency_penalty * self._counts[:n]
        if p.banned:
            banned = np.asarray(p.banned, dtype=np.int64)
            out[banned[(banned >= 0) & (banned < out.shape[0])]] = -np.inf
        top = out.max()
        if not np.isfinite(top):
            if top == -np.inf:
                raise SamplingError("every token is banned; ban fewer tokens")
            raise SamplingError("the logits hold NaN or infinity: the model produced invalid numbers; "
                                "check the model file, or compare with --backend reference")
        return out

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The full distribution the next draw follows (zeros outside the candidates)."""
        x = self.adjust(logits)
        idx, q = self._candidates(x)
        full = np.zeros(x.shape[0])
        full[slice(None) if idx is None else idx] = q
        return full

    def _candidates(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(candidate ids, or None for all; their probabilities)."""
        p = self.params
        if p.temperature == 0 or p.top_k == 1:
            return np.array([int(np.argmax(x))]), np.ones(1)
        top = x.max()
        idx = None
        if p.top_p < 1.0 or 0 < p.top_k < x.shape[0]:
            # unnormalised probabilities (largest 1) in the logits' precision: they only pick the candidates
            w = np.subtract(x, top)
            np.exp(w, out=w)
            idx = top_p_candidates(w, p.top_p, p.top_k, float(w.sum(dtype=np.float64)), wmax=1.0)
            x = x[idx]
        # p ** (1/T) renormalised == softmax(x / T) over the candidates, in float64
        q = x.astype(np.float64)
        q -= float(top)
        q /= p.temperature
        np.exp(q, out=q)
        return idx, q / q.sum()

    def sample(self, logits: np.ndarray) -> int:
        """Draw one token id; call accept() with the token actually used."""
        idx, q = self._candidates(self.adjust(logits))
        if len(q) == 1:
            return int(idx[0])
        j = min(int(np.searchsorted(np.cumsum(q), self.rng.random(), side="right")), len(q) - 1)
        return j if idx is None else int(idx[j])

    def accept(self, token: int) -> None:
        """Record a generated token: decay every counter, then count this one."""
        n = len(self._pos)
        self._counts[:n] *= self.params.penalty_decay
        i = self._pos.get(token)
        if i is None:
            if n == len(self._ids):
                self._ids = np.concatenate([self._ids, np.zeros(n, dtype=np.int64)])
                self._counts = np.concatenate([self._counts, np.zeros(n)])
            i = self._pos[token] = n
            self._ids[i] = token
        self._counts[i] += 1.0

    def __call__(self, logits: np.ndarray) -> int:
        token = self.sample(logits)
        self.accept(token)
        return token


class StopMatcher:
    """Streams text while watching for stop strings.

    feed() returns only text that cannot be the start of a stop string; when a
    stop string completes, it returns the text before it and sets `stopped`.
    """

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.reset()

    def reset(self) -> None:
        self.held = ""
        self.stopped = False
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self.held + text
        best = -1
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (best < 0 or i < best):
                best, self.matched = i, s
        if best >= 0:
            self.stopped, self.held = True, ""
            return buf[:best]
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.held = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        """Text held back at the end of generation (it was not a stop string after all)."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out
