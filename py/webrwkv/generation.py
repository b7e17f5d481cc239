"""The streaming generation loop shared by the CLI and the browser worker: one slot, many slots, chat."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
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
        token = self.sampler.sample(logits)
        self.sampler.accept(token)
        st = self.stats
        st.ids.append(token)
        if token == self.eos_id:
            raw, st.stop_reason = self.decoder.flush(), "eos"
        else:
            raw = self.decoder.feed(token)
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
                    eos_id: int | None = END_OF_TEXT) -> Iterator[StreamItem]:
    """Yield (token_id, text_piece) per generated token, then a GenerationStats.

    The stream continues from the slot's current state (reset the slot for a fresh start).
    When it ends, the slot has read `prompt_ids + ids[:-1]`: the last sampled token is not
    run, since its logits are not needed (push it first to continue). Pieces never show a
    partial stop string or a split UTF-8 character; their concatenation is the text before
    the first stop string. Pass `logits` (and no prompt) to continue from logits already
    computed for this slot's state. A sampled end-of-text (`eos_id`) ends the stream.
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
    while not ts.done:
        t0 = perf_counter()
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


@dataclass
class ChatFormat:
    """How turns are written: `{user}{sep}{message}{end}{bot}{sep}{reply}{end}`.

    The default is RWKV's `User: hi\\n\\nAssistant: Hello!\\n\\n`; a reply ends at `end`.
    """

    user: str = "User"
    bot: str = "Assistant"
    sep: str = ": "
    end: str = "\n\n"

    def clean(self, text: str) -> str:
        """One message: trimmed, with no `end` inside (lines are joined with a newline,
        or with a space when `end` is a single newline)."""
        lines = [ln.strip() for ln in text.replace("\r\n", "\n").split("\n")]
        return ("\n" if "\n\n" in self.end else " ").join(ln for ln in lines if ln)

    def ask(self, message: str) -> str:
        """A user turn and the bot's name: the text the reply follows."""
        return f"{self.user}{self.sep}{self.clean(message)}{self.end}{self.bot}{self.sep.rstrip()}"

    def prelude(self, intro: str = "", turns: Sequence[Sequence[str]] = ()) -> str:
        """The intro (then a blank line) and the example turns."""
        parts = [intro.strip() + "\n\n"] if intro.strip() else []
        parts += [f"{self.ask(u)}{self.sep[len(self.sep.rstrip()):]}{self.clean(b)}{self.end}" for u, b in turns]
        return "".join(parts)

    def stops(self) -> list[str]:
        """Where a reply ends: `end`, or the user's name starting a new line."""
        return [self.end, f"\n{self.user}{self.sep.rstrip()}"]


class ChatSession:
    """Chat on one slot in a ChatFormat (RWKV `User:` / `Assistant:` by default); the state is kept between turns.

    reply() / regenerate() (and their *_async forms) return what generate_stream yields.
    Closing a reply stream early keeps the text shown so far as the reply.
    """

    def __init__(self, runtime: Any, tokenizer: Any, params: SamplerParams | None = None,
                 fmt: ChatFormat | None = None, intro: str = "", turns: Sequence[Sequence[str]] = (),
                 max_tokens: int = 256, stop: Sequence[str] = (), slot: int = 0):
        params = params or SamplerParams()
        self.runtime, self.tokenizer, self.slot = runtime, tokenizer, slot
        self.fmt = fmt or ChatFormat()
        self.sampler = Sampler(replace(params, banned=(*params.banned, END_OF_TEXT)))
        self.prelude = self.fmt.prelude(intro, turns)
        self.stops = [*self.fmt.stops(), *stop]
        self.max_tokens = max(1, max_tokens)
        self.reset()

    def reset(self) -> None:
        """Start the conversation over (the intro and example turns are fed again)."""
        self.runtime.reset(self.slot)
        self.history: list[tuple[str, str]] = []
        self._pending = self.prelude  # text the model has yet to read before the next user turn
        self._saved: tuple[Any, np.ndarray, int, float] | None = None  # state and logits after the prompt
        self._turn: tuple[str, int, float] | None = None  # the reply being streamed

    def _restore(self) -> None:
        state = self._saved[0]
        self.runtime.set_state(self.slot, {k: np.array(v, copy=True) for k, v in state.items()})

    def _prompt(self, message: str) -> tuple[str, list[int]]:
        msg = self.fmt.clean(message)
        if not msg:
            raise WebRwkvError("the message is empty; type some text")
        ids = self.tokenizer.encode(self._pending + self.fmt.ask(msg))
        self._pending = ""
        return msg, ids

    def _no_saved(self) -> tuple[Any, np.ndarray, int, float]:
        if self._saved is None or not self.history:
            raise WebRwkvError("there is no reply to regenerate yet; send a message first")
        self._restore()
        self._pending = ""
        return self._saved

    def _finish(self, st: GenerationStats, msg: str, n_prompt: int, prefill_s: float, replay: bool = False) -> None:
        st.prompt_tokens, st.prefill_s = n_prompt, st.prefill_s + prefill_s
        target = st.text + self.fmt.end
        consumed = self.tokenizer.decode([t for t in st.ids[:-1] if t != END_OF_TEXT])
        if not replay and target.startswith(consumed):
            self._pending = target[len(consumed):]
        else:  # the state holds other text (a stop string, an interrupted step): replay the reply
            self.runtime.reset(self.slot)
            self._restore()
            self._pending = target
        self.history.append((msg, st.text.strip()))

    def _take(self, item: StreamItem, seen: list[tuple[int, str]]) -> None:
        if isinstance(item, GenerationStats):
            self._finish(item, *self._turn)
            self._turn = None
        else:
            seen.append(item)

    def _stopped(self, seen: list[tuple[int, str]]) -> None:
        """The consumer stopped early: what it was shown becomes the reply."""
        if self._turn is not None:
            st = GenerationStats(ids=[t for t, _ in seen], text="".join(p for _, p in seen), stop_reason="stopped")
            self._finish(st, *self._turn, replay=True)
            self._turn = None

    def _stream(self, msg: str, logits: np.ndarray, n_prompt: int, prefill_s: float) -> Iterator[StreamItem]:
        self.sampler.reset()
        self._turn, seen = (msg, n_prompt, prefill_s), []
        try:
            for item in generate_stream(self.runtime, self.tokenizer, [], self.sampler, self.max_tokens,
                                        self.stops, self.slot, logits=logits):
                self._take(item, seen)
                yield item
        except (GeneratorExit, KeyboardInterrupt):
            self._stopped(seen)
            raise

    def reply(self, message: str) -> Iterator[StreamItem]:
        """Stream the assistant's answer to `message`."""
        msg, ids = self._prompt(message)
        t0 = perf_counter()
        logits = prefill(self.runtime, self.slot, ids)
        self._saved = (self.runtime.get_state(self.slot), logits, len(ids), perf_counter() - t0)
        return self._stream(msg, logits, len(ids), self._saved[3])

    def regenerate(self) -> Iterator[StreamItem]:
        """Stream a new answer to the last message, from the state saved before the last reply."""
        _, logits, n_prompt, prefill_s = self._no_saved()
        msg = self.history.pop()[0]
        return self._stream(msg, logits, n_prompt, prefill_s)

    async def _stream_async(self, msg: str, logits: np.ndarray, n_prompt: int,
                            prefill_s: float) -> AsyncIterator[StreamItem]:
        self.sampler.reset()
        self._turn, seen = (msg, n_prompt, prefill_s), []
        try:
            async for item in generate_stream_async(self.runtime, self.tokenizer, [], self.sampler,
                                                    self.max_tokens, self.stops, self.slot, logits=logits):
                self._take(item, seen)
                yield item
        except (GeneratorExit, KeyboardInterrupt, asyncio.CancelledError):
            self._stopped(seen)
            raise

    async def reply_async(self, message: str) -> AsyncIterator[StreamItem]:
        """reply() for the browser (run_async, get_state_async)."""
        msg, ids = self._prompt(message)
        t0 = perf_counter()
        logits = await prefill_async(self.runtime, self.slot, ids)
        self._saved = (await self.runtime.get_state_async(self.slot), logits, len(ids), perf_counter() - t0)
        async for item in self._stream_async(msg, logits, len(ids), self._saved[3]):
            yield item

    async def regenerate_async(self) -> AsyncIterator[StreamItem]:
        """regenerate() for the browser."""
        _, logits, n_prompt, prefill_s = self._no_saved()
        msg = self.history.pop()[0]
        async for item in self._stream_async(msg, logits, n_prompt, prefill_s):
            yield item
