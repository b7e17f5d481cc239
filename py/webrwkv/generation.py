"""The streaming generation loop shared by the CLI and the browser worker: one slot and many slots.
Chat sessions live in chat_session.py (ChatFormat and ChatSession are re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, AsyncIterator, Iterator, Sequence, Union

import numpy as np

from .errors import WebRwkvError
from .sampling import Sampler, SamplerParams, StopMatcher

END_OF_TEXT = 0


@dataclass
class GenerationStats:
    """What one stream produced and how fast; the last item a stream yields."""

    prompt_tokens: int = 0
    ids: list[int] = field(default_factory=list)
    text: str = ""
    stop_reason: str = ""          # "stop" (a stop string), "eos" (end-of-text) or "max_tokens"
    stop: str | None = None        # the stop string that ended the text
    prefill_s: float = 0.0         # prompt in, until the first token was sampled
    decode_s: float = 0.0          # the rest: one forward pass and one sample per token

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        n = max(len(self.ids) - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens, "ids": list(self.ids), "text": self.text,
            "stop_reason": self.stop_reason, "stop": self.stop,
            "prefill_s": self.prefill_s, "decode_s": self.decode_s,
            "prefill_tps": self.prefill_tps, "decode_tps": self.decode_tps,
        }


StreamItem = Union[tuple[int, str], GenerationStats]


class TokenStream:
    """Sampling, streaming-safe decoding and stop strings for one stream, with no runtime calls."""

    def __init__(self, tokenizer: Any, params: SamplerParams | Sampler | None, max_tokens: int,
                 stop: Sequence[str] = (), prompt_tokens: int = 0, eos_id: int | None = END_OF_TEXT):
        self.tokenizer = tokenizer
        self.sampler = params if isinstance(params, Sampler) else Sampler(params)
        self.max_tokens = max_tokens
        self.eos_id = eos_id
        self.decoder = tokenizer.stream()
        self.matcher = StopMatcher(stop)
        self.stats = GenerationStats(prompt_tokens=prompt_tokens)
        self.vocab = int(getattr(tokenizer, "vocab_size", 0) or 0)
        self.done = max_tokens <= 0
        if self.done:
            self.stats.stop_reason = "max_tokens"

    def step(self, logits: np.ndarray) -> tuple[int, str]:
        """Sample the next token from its logits; returns (token, text it completes)."""
        logits = np.asarray(logits).reshape(-1)
        if self.vocab and logits.shape[0] > self.vocab:  # ids with no text are never drawn
            logits = logits[: self.vocab]
        return self.feed(self.sampler.sample(logits))

    def greedy_on(self, runtime: Any) -> bool:
        """Whether the runtime can pick this stream's tokens itself: a greedy sampler with no penalties
        or bans, and a runtime with greedy()."""
        p = self.sampler.params
        return (p.temperature == 0 and not p.presence_penalty and not p.frequency_penalty and not p.banned
                and hasattr(runtime, "greedy"))

    def feed(self, token: int) -> tuple[int, str]:
        """Take the next token (sampled here or chosen elsewhere); returns (token, text it completes)."""
        token = int(token)
        self.sampler.accept(token)
        st = self.stats
        st.ids.append(token)
        if token == self.eos_id:
            raw, st.stop_reason = self.decoder.flush(), "eos"
        else:  # end-of-text that is not a stop (eos_id=None) has no text: decode it as nothing
            raw = self.decoder.feed(token) if token != END_OF_TEXT else ""
            if len(st.ids) >= self.max_tokens:
                raw += self.decoder.flush()
                st.stop_reason = "max_tokens"
        piece = self.matcher.feed(raw)
        if self.matcher.stopped:
            st.stop_reason, st.stop = "stop", self.matcher.matched
        elif st.stop_reason:
            piece += self.matcher.flush()
        self.done = bool(st.stop_reason)
        st.text += piece
        return token, piece


def _tokens(ids: Sequence[int]) -> list[int]:
    ids = [int(t) for t in ids]
    if not ids:
        raise WebRwkvError("the prompt has no tokens; give a prompt (an empty text can start from token 0)")
    return ids


def prefill(runtime: Any, slot: int, ids: Sequence[int]) -> np.ndarray:
    """Push `ids` on `slot` and run (chunk by chunk) until its logits come out."""
    ids = _tokens(ids)
    runtime.push(slot, ids)
    for _ in range(len(ids) + 1):
        out = runtime.run()
        if slot in out:
            return out[slot]
    raise WebRwkvError(f"the runtime returned no logits for slot {slot}; is another stream using it?")


async def prefill_async(runtime: Any, slot: int, ids: Sequence[int]) -> np.ndarray:
    """prefill() with run_async (the browser can only read results asynchronously)."""
    ids = _tokens(ids)
    runtime.push(slot, ids)
    for _ in range(len(ids) + 1):
        out = await runtime.run_async()
        if slot in out:
            return out[slot]
    raise WebRwkvError(f"the runtime returned no logits for slot {slot}; is another stream using it?")


def generate_stream(runtime: Any, tokenizer: Any, prompt_ids: Sequence[int],
                    sampler_params: SamplerParams | Sampler | None = None, max_tokens: int = 128,
                    stop: Sequence[str] = (), slot: int = 0, logits: np.ndarray | None = None,
                    eos_id: int | None = END_OF_TEXT, lookahead: int = 0) -> Iterator[StreamItem]:
    """Yield (token_id, text_piece) per generated token, then a GenerationStats.

    The stream continues from the slot's current state (reset the slot for a fresh start).
    When it ends, the slot has read `prompt_ids + ids[:-1]`: the last sampled token is not
    run, since its logits are not needed (push it first to continue). Pieces never show a
    partial stop string or a split UTF-8 character; their concatenation is the text before
    the first stop string. Pass `logits` (and no prompt) to continue from logits already
    computed for this slot's state. A sampled end-of-text (`eos_id`) ends the stream.

    `lookahead` > 1 lets a greedy stream (TokenStream.greedy_on) pick its tokens on the GPU, that many
    steps per read-back; the tokens are the same, but a stream that stops early (end-of-text, a stop
    string) leaves the slot up to lookahead - 1 tokens further on: use it only when the state is dropped.
    """
    ts = TokenStream(tokenizer, sampler_params, max_tokens, stop, len(prompt_ids), eos_id)
    t0 = perf_counter()
    if logits is None:
        logits = prefill(runtime, slot, prompt_ids)
    if ts.done:
        ts.stats.prefill_s = perf_counter() - t0
        yield ts.stats
        return
    item = ts.step(logits)
    ts.stats.prefill_s = perf_counter() - t0
    yield item
    on_gpu = lookahead > 1 and ts.greedy_on(runtime)
    while not ts.done:
        t0 = perf_counter()
        if on_gpu:
            ids = runtime.greedy(slot, item[0], min(lookahead, ts.max_tokens - len(ts.stats.ids)),
                                 min(ts.vocab or runtime.info.vocab, runtime.info.vocab))
            ts.stats.decode_s += perf_counter() - t0
            for t in ids:
                item = ts.feed(t)
                yield item
                if ts.done:
                    break
            continue
        item = ts.step(prefill(runtime, slot, [item[0]]))
        ts.stats.decode_s += perf_counter() - t0
        yield item
    yield ts.stats


async def generate_stream_async(runtime: Any, tokenizer: Any, prompt_ids: Sequence[int],
                                sampler_params: SamplerParams | Sampler | None = None, max_tokens: int = 128,
                                stop: Sequence[str] = (), slot: int = 0, logits: np.ndarray | None = None,
                                eos_id: int | None = END_OF_TEXT) -> AsyncIterator[StreamItem]:
    """generate_stream() for the browser: the same items, using run_async."""
    ts = TokenStream(tokenizer, sampler_params, max_tokens, stop, len(prompt_ids), eos_id)
    t0 = perf_counter()
    if logits is None:
        logits = await prefill_async(runtime, slot, prompt_ids)
    if ts.done:
        ts.stats.prefill_s = perf_counter() - t0
        yield ts.stats
        return
    item = ts.step(logits)
    ts.stats.prefill_s = perf_counter() - t0
    yield item
    while not ts.done:
        t0 = perf_counter()
        item = ts.step(await prefill_async(runtime, slot, [item[0]]))
        ts.stats.decode_s += perf_counter() - t0
        yield item
    yield ts.stats


@dataclass
class BatchStats:
    """Per-slot results of generate_batch and the aggregate speed."""

    slots: dict[int, GenerationStats]
    wall_s: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.slots.values())

    @property
    def generated_tokens(self) -> int:
        return sum(len(s.ids) for s in self.slots.values())

    @property
    def tps(self) -> float:
        """All tokens (prompt and generated) through the model per second."""
        return (self.prompt_tokens + self.generated_tokens) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def generated_tps(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"slots": {str(k): v.to_dict() for k, v in self.slots.items()}, "wall_s": self.wall_s,
                "prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                "tps": self.tps, "generated_tps": self.generated_tps}


def generate_batch(runtime: Any, tokenizer: Any, prompts: Sequence[Sequence[int]],
                   sampler_params: SamplerParams | None = None, max_tokens: int = 64,
                   stop: Sequence[str] = (), eos_id: int | None = END_OF_TEXT
                   ) -> Iterator[Union[tuple[int, int, str], BatchStats]]:
    """Run prompt i on slot i, all at once; yield (slot, token_id, text_piece), then a BatchStats.

    Each slot samples with its own Sampler; a seed s becomes s + slot.
    """
    params = sampler_params or SamplerParams()
    streams: dict[int, TokenStream] = {}
    busy = 0.0
    for slot, ids in enumerate(prompts):
        ids = _tokens(ids)
        seed = None if params.seed is None else params.seed + slot
        streams[slot] = TokenStream(tokenizer, params.with_seed(seed), max_tokens, stop, len(ids), eos_id)
        if not streams[slot].done:
            runtime.push(slot, ids)
    active = {s for s, ts in streams.items() if not ts.done}
    idle_runs = 0
    while active:
        t0 = perf_counter()
        out = runtime.run()
        ready = [(s, out[s]) for s in sorted(active) if s in out]
        idle_runs = 0 if ready else idle_runs + 1
        if idle_runs > max(len(p) for p in prompts) + 1:
            raise WebRwkvError("the runtime stopped returning logits; is another stream using its slots?")
        busy += perf_counter() - t0
        for s, logits in ready:
            t0 = perf_counter()
            ts = streams[s]
            token, piece = ts.step(logits)
            now = perf_counter()
            if len(ts.stats.ids) == 1:
                ts.stats.prefill_s = busy + now - t0
            else:
                ts.stats.decode_s = busy + now - t0 - ts.stats.prefill_s
            if ts.done:
                active.discard(s)
            else:
                runtime.push(s, [token])
            busy += perf_counter() - t0
            yield s, token, piece
    yield BatchStats(slots={s: ts.stats for s, ts in streams.items()}, wall_s=busy if streams else 0.0)


def __getattr__(name: str) -> Any:
    """ChatFormat and ChatSession moved to chat_session.py; old imports from here keep working."""
    if name in ("ChatFormat", "ChatSession"):
        from . import chat_session

        return getattr(chat_session, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
