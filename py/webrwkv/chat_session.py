"""Chat on one slot: ChatFormat (how turns are written) and ChatSession (state kept between turns,
regenerate, early stop), over the streaming loop in generation.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from time import perf_counter
from typing import Any, AsyncIterator, Iterator, Sequence

import numpy as np

from .errors import WebRwkvError
from .generation import (END_OF_TEXT, GenerationStats, StreamItem, generate_stream, generate_stream_async, prefill,
                         prefill_async)
from .sampling import Sampler, SamplerParams


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
