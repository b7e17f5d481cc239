"""Token sampling in numpy, the reference for the GPU sampler (shaders/sample.wgsl): temperature, top-p,
top-k, min-p, RWKV-style decayed penalties, banned tokens, a counter-based random generator; stop strings.

Order of operations (as in the official RWKV pipeline): penalties and bans change the logits; top-k,
top-p and min-p choose the candidates from the resulting distribution w = exp(x - max); the temperature
then reshapes the distribution over those candidates (w ** (1 / T)). Every boundary keeps ties: the
candidates are the tokens whose weight reaches a threshold. The draw walks the candidates in id order,
with the uniform number uniform(seed, stream, step), so a seed gives the same tokens on every backend.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

from .errors import SamplingError

__all__ = ["SamplerParams", "Sampler", "SamplingError", "StopMatcher", "uniform", "candidate_threshold"]
M32 = 0xFFFFFFFF


def pcg(v: int) -> int:
    """The PCG output permutation as a 32-bit hash (shaders/sample.wgsl has the same function)."""
    state = (v * 747796405 + 2891336453) & M32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & M32
    return (word >> 22) ^ word


def uniform(seed: int, stream: int, step: int) -> float:
    """A uniform number in [0, 1) with 24 bits, counter-based: the same (seed, stream, step) gives the
    same number everywhere. stream is the slot, step the number of tokens the stream has drawn."""
    h = pcg(step & M32)
    h = pcg(h ^ (stream & M32))
    h = pcg(h ^ (seed & M32))
    h = pcg(h ^ ((seed >> 32) & M32))
    return (h >> 8) / 16777216.0


@dataclass
class SamplerParams:
    """Everything that decides how a token is drawn from the logits."""

    temperature: float = 1.0       # 0 means greedy (argmax)
    top_p: float = 0.85            # 1.0 disables top-p
    top_k: int = 0                 # 0 disables top-k
    presence_penalty: float = 0.0  # subtracted once from every token already generated
    frequency_penalty: float = 0.0  # subtracted per (decayed) occurrence
    penalty_decay: float = 0.996   # occurrence counts are multiplied by this every step
    seed: int | None = None        # None: a random seed
    banned: tuple[int, ...] = field(default_factory=tuple)
    min_p: float = 0.0             # drop tokens less likely than min_p times the most likely one

    def validate(self) -> "SamplerParams":
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}; use 0 for greedy")
        if not (0.0 < self.top_p <= 1.0):
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}; use 1 to disable it")
        if not (isinstance(self.top_k, (int, np.integer)) and self.top_k >= 0):
            raise SamplingError(f"top_k must be an integer >= 0, got {self.top_k}; use 0 to disable it")
        if not (0.0 <= self.min_p < 1.0):
            raise SamplingError(f"min_p must be in [0, 1), got {self.min_p}; use 0 to disable it")
        if not (0.0 <= self.penalty_decay <= 1.0):
            raise SamplingError(f"penalty_decay must be in [0, 1], got {self.penalty_decay}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not np.isfinite(getattr(self, name)):
                raise SamplingError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.seed is not None and not (isinstance(self.seed, (int, np.integer)) and 0 <= self.seed < 2 ** 64):
            raise SamplingError(f"seed must be an integer in [0, 2^64), got {self.seed!r}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @classmethod
    def from_args(cls, args: object, banned: Iterable[int] = ()) -> "SamplerParams":
        """Build from an argparse namespace carrying the CLI sampling options."""
        return cls(
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
            penalty_decay=args.penalty_decay, seed=args.seed, banned=tuple(banned),
            min_p=getattr(args, "min_p", 0.0),
        ).validate()

    def with_seed(self, seed: int | None) -> "SamplerParams":
        return replace(self, seed=seed)


def candidate_threshold(w: np.ndarray, top_p: float, top_k: int, min_p: float) -> float:
    """The smallest weight a candidate may have (w = exp(x - max), so the largest is 1): the largest of
    min_p, the top_k-th largest weight, and the largest weight v whose tokens (w >= v) hold top_p of the
    mass. Only a band of the head is sorted: a cut falls eightfold until the tokens above it hold the mass."""
    n = w.shape[0]
    t = float(min_p)
    if 0 < top_k < n:
        t = max(t, float(np.partition(w, n - top_k)[n - top_k]))
    if top_p < 1.0:
        target = top_p * float(w.sum(dtype=np.float64))
        cut = 1.0 / 8
        for _ in range(12):
            head = w[w >= cut]
            if head.sum(dtype=np.float64) >= target:
                break
            cut /= 8
        else:
            head = w
        head = np.sort(head)[::-1]
        k = min(int(np.searchsorted(np.cumsum(head, dtype=np.float64), target)), len(head) - 1)
        t = max(t, float(head[k]))
    return t


class Sampler:
    """Draws tokens from logits; keeps the penalty counters and the draw counter of its stream."""

    def __init__(self, params: SamplerParams | None = None, stream: int = 0):
        self.params = (params or SamplerParams()).validate()
        self.seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)
        self.stream = int(stream)
        self.step = 0  # tokens drawn so far: the random stream's position
        self.reset()

    def reset(self) -> None:
        """Forget the occurrence counters (the random stream goes on)."""
        self._pos: dict[int, int] = {}
        self._ids = np.zeros(64, dtype=np.int64)
        self._counts = np.zeros(64, dtype=np.float32)

    def occurrences(self) -> dict[int, float]:
        """Current (decayed) occurrence count per generated token."""
        return {t: float(self._counts[i]) for t, i in self._pos.items()}

    def adjust(self, logits: np.ndarray) -> np.ndarray:
        """Logits after penalties and bans (a copy: float32 stays float32, anything else is float64)."""
        p = self.params
        logits = np.asarray(logits)
        ft = np.float32 if logits.dtype == np.float32 else np.float64
        out = np.array(logits, dtype=ft).reshape(-1)
        n = len(self._pos)
        if n and (p.presence_penalty or p.frequency_penalty):
            ids = self._ids[:n]
            keep = ids < out.shape[0]
            pen = ft(p.presence_penalty) + ft(p.frequency_penalty) * self._counts[:n].astype(ft)
            out[ids[keep]] -= pen[keep]
        if p.banned:
            banned = np.asarray(p.banned, dtype=np.int64)
            out[banned[(banned >= 0) & (banned < out.shape[0])]] = -np.inf
        top = out.max()
        if not np.isfinite(top):  # max is NaN when any logit is
            if top == -np.inf:
                raise SamplingError("every token is banned; ban fewer tokens")
            raise SamplingError("the logits hold NaN or infinity: the model produced invalid numbers; "
                                "check the model file, or compare with --backend reference")
        return out

    def _candidates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(candidate ids in id order, their probabilities) for adjusted logits x."""
        p = self.params
        if p.greedy:
            return np.array([int(np.argmax(x))]), np.ones(1)
        top = x.max()
        if p.top_p < 1.0 or 0 < p.top_k < x.shape[0] or p.min_p > 0:
            w = np.subtract(x, top)
            np.exp(w, out=w)
            idx = np.flatnonzero(w >= candidate_threshold(w, p.top_p, p.top_k, p.min_p))
        else:
            idx = np.arange(x.shape[0])
        # w ** (1/T) renormalised == softmax(x / T) over the candidates, in float64
        q = x[idx].astype(np.float64)
        q -= float(top)
        q /= p.temperature
        np.exp(q, out=q)
        return idx, q / q.sum()

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The full distribution the next draw follows (zeros outside the candidates)."""
        x = self.adjust(logits)
        idx, q = self._candidates(x)
        full = np.zeros(x.shape[0])
        full[idx] = q
        return full

    def sample(self, logits: np.ndarray) -> int:
        """Draw one token id (the draw counter moves on); call accept() with the token actually used."""
        idx, q = self._candidates(self.adjust(logits))
        u = uniform(self.seed, self.stream, self.step)
        self.step += 1
        if len(q) == 1:
            return int(idx[0])
        j = min(int(np.searchsorted(np.cumsum(q), u, side="right")), len(q) - 1)
        return int(idx[j])

    def accept(self, token: int) -> None:
        """Record a generated token: decay every counter, then count this one (float32, as on the GPU)."""
        n = len(self._pos)
        self._counts[:n] *= np.float32(self.params.penalty_decay)
        i = self._pos.get(token)
        if i is None:
            if n == len(self._ids):
                self._ids = np.concatenate([self._ids, np.zeros(n, dtype=np.int64)])
                self._counts = np.concatenate([self._counts, np.zeros(n, dtype=np.float32)])
            i = self._pos[token] = n
            self._ids[i] = token
        self._counts[i] += np.float32(1.0)

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
