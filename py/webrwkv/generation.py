"""The streaming generation loop of the CLI and the browser worker: one slot and many slots.

Written once, async. The sync forms drive the same coroutines directly: on the native GPU and the numpy
reference no await ever suspends. On a runtime with a GPU decoder (webrwkv.decode) the tokens are picked
on the GPU, a window of steps per read-back, and a stream that ends inside a window is rolled back, so
the tokens and the final state are those of step-by-step decoding; elsewhere the logits come back every
step and webrwkv.sampling picks the token.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, AsyncIterator, Awaitable, Iterator, Sequence, TypeVar, Union

import numpy as np

from .errors import WebRwkvError
from .sampling import Sampler, SamplerParams, StopMatcher

END_OF_TEXT = 0
LOOKAHEAD = 32  # decode steps per read-back at most (windows grow 1, 2, 4, ... up to this)
AHEAD_S = 0.2  # GPU seconds of steps queued past the window being read, at most (but one window always): a
               # stream's end, a stop or Stop waits for them, so a slow GPU keeps one window, a fast one more
T = TypeVar("T")


def run_sync(aw: Awaitable[T]) -> T:
    """The result of a coroutine that never suspends (every await in it is already resolved)."""
    coro = aw.__await__()
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    coro.close()
    raise WebRwkvError("this runtime waits for the GPU asynchronously; use the async API (generate_stream_async)")


def iterate_sync(agen: AsyncIterator[T]) -> Iterator[T]:
    """An async generator that never suspends, as a plain generator (closing one closes the other)."""
    try:
        while True:
            try:
                item = run_sync(agen.__anext__())
            except StopAsyncIteration:
                return
            yield item
    finally:
        run_sync(agen.aclose())


@dataclass
class GenerationStats:
    """What one stream produced and how fast; the last item a stream yields."""

    prompt_tokens: int = 0
    ids: list[int] = field(default_factory=list)
    text: str = ""
    stop_reason: str = ""          # "stop" (a stop string), "eos" (end-of-text) or "max_tokens"
    stop: str | None = None        # the stop string that ended the text
    prefill_s: float = 0.0         # prompt in, until the first token was picked
    decode_s: float = 0.0          # the rest

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
                 stop: Sequence[str] = (), prompt_tokens: int = 0, eos_id: int | None = END_OF_TEXT,
                 stream: int = 0):
        self.tokenizer = tokenizer
        self.sampler = params if isinstance(params, Sampler) else Sampler(params, stream)
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

    def feed(self, token: int, drawn: bool = False) -> tuple[int, str]:
        """Take the next token (sampled here, or `drawn` elsewhere with this stream's random numbers);
        returns (token, text it completes)."""
        token = int(token)
        if drawn:
            self.sampler.step += 1
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


async def feed_async(runtime: Any, slot: int, ids: Sequence[int]) -> None:
    """Run `ids` on `slot` (chunk by chunk) without making any logits."""
    if not ids:
        return
    runtime.push(slot, list(ids))
    while runtime.pending(slot):
        await runtime.run_async(outputs=False)


async def prefill_async(runtime: Any, slot: int, ids: Sequence[int]) -> np.ndarray:
    """Push `ids` on `slot` and run (chunk by chunk) until its logits come out."""
    ids = _tokens(ids)
    runtime.push(slot, ids)
    for _ in range(len(ids) + 1):
        out = await runtime.run_async()
        if slot in out:
            return out[slot]
    raise WebRwkvError(f"the runtime returned no logits for slot {slot}; is another stream using it?")


def prefill(runtime: Any, slot: int, ids: Sequence[int]) -> np.ndarray:
    return run_sync(prefill_async(runtime, slot, ids))


class Windows:
    """The decode windows of some streams on a GPU decoder: sizes grow 1, 2, 4, ... up to `lookahead`, at
    most `depth` are in flight (the decoder's), and `settle` rolls a stream back to what it has delivered."""

    def __init__(self, decoder: Any, lookahead: int) -> None:
        self.dec, self.size, self.cap = decoder, 1, max(1, min(lookahead, decoder.max_window))
        self.queue: deque = deque()  # (window, {slot: first token})
        self.step_s, self._t_read = 0.0, None  # a step's time, from the reads of consecutive windows

    @property
    def depth(self) -> int:
        """Windows in flight at most: the decoder's (a state copy each)."""
        return self.dec.depth

    def room(self) -> bool:
        """Another window may be queued: fewer than `depth` in flight, and once a step's time is known,
        what is queued past the next window to read is under AHEAD_S of GPU time."""
        if len(self.queue) >= self.depth:
            return False
        ahead = sum(w.n for w, _ in list(self.queue)[1:])
        return not ahead or not self.step_s or (ahead + min(self.size, self.cap)) * self.step_s <= AHEAD_S

    def read_done(self, w: Any) -> None:
        """Window w was read: its steps took the time since the window before was read."""
        now = perf_counter()
        if self._t_read is not None:
            self.step_s = (now - self._t_read) / w.n
        self._t_read = now

    def submit(self, budget: int, tokens: dict[int, int] | None = None) -> int:
        """Queue the next window (at most `budget` steps); returns its steps."""
        n = min(self.size, self.cap, budget)
        w = self.dec.submit(tokens, n)
        self.queue.append((w, dict(tokens or {})))  # the first tokens of a continued window come with the last
        self.size = min(self.size * 2, self.cap)
        return n

    def after(self, slot: int) -> Any:
        """The first queued window that runs `slot` (None when there is none)."""
        return next((x for x, _ in self.queue if slot in x.slots), None)

    def settle(self, w: Any, slot: int, ran: list[int], delivered: int, later: Any = None) -> None:
        """The stream on `slot` ended having delivered `delivered` ids of window w (whose steps ran `ran`);
        `later` is the next window that ran the slot, if any. Put its state where step-by-step decoding
        leaves it, having read ran[:delivered] (call it before submitting any other window)."""
        if delivered < len(ran):
            self.dec.rollback(w, slot, ran[:delivered])
        elif later is not None:  # the later window's copy is the state right after this one
            self.dec.rollback(later, slot, [])


async def _decode_gpu(runtime: Any, ts: TokenStream, slot: int, token: int, lookahead: int,
                      t0: float) -> AsyncIterator[tuple[int, str]]:
    """One stream on the GPU decoder, starting by running `token`."""
    dec = runtime.decoder
    dec.configure(slot, ts.sampler, ts.vocab or None)
    win = Windows(dec, lookahead)
    budget = ts.max_tokens - len(ts.stats.ids)
    budget -= win.submit(budget, {slot: token})
    t_first = None
    while win.queue:
        while budget and win.room():
            budget -= win.submit(budget)  # the next windows run while this one is read
        w, first = win.queue.popleft()
        got = (await dec.read_async(w))[slot]
        win.read_done(w)
        ran = [first[slot]] + got[:-1]  # the tokens the window ran
        if win.queue:
            win.queue[0][1][slot] = got[-1]
        delivered = 0
        try:
            for t in got:
                item = ts.feed(t, drawn=True)
                delivered += 1
                if t_first is None:
                    t_first = perf_counter()
                    ts.stats.prefill_s = t_first - t0
                yield item
                if ts.done:
                    break
        except BaseException:  # closed early (or failed): the state must match what was delivered
            win.settle(w, slot, ran, delivered, win.after(slot))
            raise
        if ts.done:
            win.settle(w, slot, ran, delivered, win.after(slot))
            break
    if t_first is not None:
        ts.stats.decode_s = perf_counter() - t_first


async def _decode_cpu(runtime: Any, ts: TokenStream, slot: int, ids: list[int],
                      t0: float) -> AsyncIterator[tuple[int, str]]:
    """One stream with the logits read back every step and the token picked by numpy."""
    logits = await prefill_async(runtime, slot, ids)
    item = ts.step(logits)
    ts.stats.prefill_s = perf_counter() - t0
    yield item
    t1 = perf_counter()
    while not ts.done:
        item = ts.step(await prefill_async(runtime, slot, [item[0]]))
        ts.stats.decode_s = perf_counter() - t1
        yield item


async def generate_stream_async(runtime: Any, tokenizer: Any, prompt_ids: Sequence[int],
                                sampler_params: SamplerParams | Sampler | None = None, max_tokens: int = 128,
                                stop: Sequence[str] = (), slot: int = 0, eos_id: int | None = END_OF_TEXT,
                                lookahead: int = LOOKAHEAD) -> AsyncIterator[StreamItem]:
    """Yield (token_id, text_piece) per generated token, then a GenerationStats.

    The stream continues from the slot's current state (reset the slot for a fresh start). When it
    ends, however it ends (a stop string, end-of-text, max_tokens, or the consumer closing it), the slot
    has read `prompt_ids` and every yielded id but the last: the last one is not run (push it first to
    continue). Pieces never show a partial stop string or a split UTF-8 character; their concatenation
    is the text before the first stop string. A sampled end-of-text (`eos_id`) ends the stream.
    `lookahead` bounds the decode steps per read-back on a GPU decoder (0: read every step's logits).
    """
    ids = _tokens(prompt_ids)
    ts = TokenStream(tokenizer, sampler_params, max_tokens, stop, len(ids), eos_id, stream=slot)
    t0 = perf_counter()
    if ts.done:
        await feed_async(runtime, slot, ids)
        ts.stats.prefill_s = perf_counter() - t0
        yield ts.stats
        return
    await feed_async(runtime, slot, ids[:-1])  # the last prompt token runs as the first decode step
    if runtime.decoder is not None and lookahead > 0:
        stream = _decode_gpu(runtime, ts, slot, ids[-1], lookahead, t0)
    else:
        stream = _decode_cpu(runtime, ts, slot, ids[-1:], t0)
    try:
        async for item in stream:
            yield item
    finally:
        await stream.aclose()
    yield ts.stats


def generate_stream(runtime: Any, tokenizer: Any, prompt_ids: Sequence[int], *args: Any,
                    **kw: Any) -> Iterator[StreamItem]:
    """generate_stream_async for runtimes that never suspend (native GPU, numpy reference)."""
    return iterate_sync(generate_stream_async(runtime, tokenizer, prompt_ids, *args, **kw))
