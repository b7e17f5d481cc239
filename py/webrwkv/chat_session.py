"""Chat on one slot, the same for the CLI and the browser: ChatFormat (how turns are written, and where a
reply ends) and ChatSession (state kept between turns, regenerate, early stop, OpenAI-style message lists)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, replace
from time import perf_counter
from typing import Any, AsyncIterator, Iterator, Sequence

import numpy as np

from .errors import WebRwkvError
from .generation import END_OF_TEXT, LOOKAHEAD, GenerationStats, StreamItem, feed_async, generate_stream_async
from .generation import iterate_sync
from .sampling import Sampler, SamplerParams


@dataclass
class ChatFormat:
    """How turns are written: `{user}{sep}{message}{end}{bot}{sep}{reply}{end}`; a system message is
    `{system}{sep}{text}{end}` (or the text and a blank line when `system` is empty).

    The default is RWKV's `User: hi\\n\\nAssistant: Hello!\\n\\n`; a reply ends at `end`.
    """

    user: str = "User"
    bot: str = "Assistant"
    sep: str = ": "
    end: str = "\n\n"
    system: str = ""

    def clean(self, text: str) -> str:
        """One message: trimmed, with no `end` inside (lines are joined with a newline,
        or with a space when `end` is a single newline)."""
        lines = [ln.strip() for ln in str(text).replace("\r\n", "\n").split("\n")]
        return ("\n" if "\n\n" in self.end else " ").join(ln for ln in lines if ln)

    def ask(self, message: str) -> str:
        """A user turn and the bot's name: the text the reply follows."""
        return f"{self.user}{self.sep}{self.clean(message)}{self.end}{self.bot}{self.sep.rstrip()}"

    def intro(self, text: str) -> str:
        """A system message (or a scene-setting introduction)."""
        if not text.strip():
            return ""
        return f"{self.system}{self.sep}{self.clean(text)}{self.end}" if self.system else text.strip() + "\n\n"

    def prelude(self, intro: str = "", turns: Sequence[Sequence[str]] = ()) -> str:
        """The intro and the earlier (or example) turns."""
        parts = [self.intro(intro)]
        parts += [f"{self.ask(u)}{self.sep[len(self.sep.rstrip()):]}{self.clean(b)}{self.end}" for u, b in turns]
        return "".join(parts)

    def stops(self) -> list[str]:
        """Where a reply ends: `end`, or the user's name starting a new line."""
        return [self.end, f"\n{self.user}{self.sep.rstrip()}"]

    def to_dict(self) -> dict[str, Any]:
        """The format as the page and the JS API get it, with its stop strings."""
        return {**asdict(self), "stops": self.stops()}

    @classmethod
    def from_dict(cls, d: dict | None) -> "ChatFormat":
        d = dict(d or {})
        known = {k: str(d[k]) for k in ("user", "bot", "sep", "end", "system") if k in d}
        return cls(**known)


def split_messages(messages: Sequence[dict]) -> tuple[str, list[tuple[str, str]], str]:
    """OpenAI-style [{role, content}] -> (system text, [(user, assistant)] turns, the last user message)."""
    system, turns, user = [], [], None
    for m in messages:
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
        if isinstance(content, list):  # content parts: the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise WebRwkvError(f"a message must be {{role: system|user|assistant, content: text}}, got {m!r}")
        if role == "system":
            system.append(content)
        elif role == "user":
            if user is not None:  # two user messages in a row: one turn
                content = user + "\n" + content
            user = content
        elif user is None:
            raise WebRwkvError("an assistant message must follow a user message")
        else:
            turns.append((user, content))
            user = None
    if user is None:
        raise WebRwkvError("the conversation must end with a user message")
    return "\n".join(system), turns, user


class ChatSession:
    """Chat on one slot in a ChatFormat; the state is kept between turns.

    reply() / regenerate() / respond() (and their *_async forms) yield what generate_stream yields.
    Closing a reply stream early keeps the text shown so far as the reply.
    """

    def __init__(self, runtime: Any, tokenizer: Any, params: SamplerParams | None = None,
                 fmt: ChatFormat | None = None, intro: str = "", turns: Sequence[Sequence[str]] = (),
                 max_tokens: int = 256, stop: Sequence[str] = (), slot: int = 0, lookahead: int = LOOKAHEAD):
        self.runtime, self.tokenizer, self.slot, self.lookahead = runtime, tokenizer, slot, lookahead
        self.fmt = fmt or ChatFormat()
        self.extra_stops = list(stop)
        self.max_tokens = max(1, max_tokens)
        self.set_params(params or SamplerParams())
        self.default_intro, self.examples = intro, [tuple(t) for t in turns]  # a model card's, or the CLI's
        self.intro, self.turns = intro, []  # the conversation's own system text and earlier turns
        self.reset()

    def set_params(self, params: SamplerParams) -> None:
        """Sampling for the next replies (end-of-text is always banned: a reply ends at a stop string)."""
        self.sampler = Sampler(replace(params, banned=(*params.banned, END_OF_TEXT)), self.slot)

    @property
    def prelude(self) -> str:
        """The text a fresh conversation starts with: the intro, the example turns, the earlier turns."""
        return self.fmt.prelude(self.intro, [*self.examples, *self.turns])

    @property
    def stops(self) -> list[str]:
        return [*self.fmt.stops(), *self.extra_stops]

    def reset(self, intro: str | None = None, turns: Sequence[Sequence[str]] | None = None) -> None:
        """Start the conversation over (the intro and example turns are read again); `intro` and `turns`
        replace the conversation's system text and earlier turns."""
        if intro is not None:
            self.intro = intro
        if turns is not None:
            self.turns = [tuple(t) for t in turns]
        self.runtime.reset(self.slot)
        self.history: list[tuple[str, str]] = []
        self._pending = self.prelude  # text the model has yet to read
        self._pending_ids: list[int] = []  # and a token before it (a replayed prompt's last one)
        self._saved: tuple[Any, int, int, float] | None = None  # state before the prompt's last token
        self._turn: tuple[str, int, float] | None = None  # the reply being streamed

    def _restore(self) -> None:
        state = self._saved[0]
        self.runtime.set_state(self.slot, {k: np.array(v, copy=True) for k, v in state.items()})

    def _finish(self, st: GenerationStats, msg: str, n_prompt: int, prefill_s: float, replay: bool = False) -> None:
        st.prompt_tokens, st.prefill_s = n_prompt, st.prefill_s + prefill_s
        target = st.text + self.fmt.end
        consumed = self.tokenizer.decode([t for t in st.ids[:-1] if t != END_OF_TEXT])
        if not replay and target.startswith(consumed):
            self._pending = target[len(consumed):]
        else:  # the state holds other text (a stop string, an interrupted step): replay the reply
            self._restore()
            self._pending_ids, self._pending = [self._saved[1]], target
        self.history.append((msg, st.text.strip()))

    async def _stream(self, msg: str, last: int, n_prompt: int, prefill_s: float) -> AsyncIterator[StreamItem]:
        self.sampler.reset()
        self._turn, seen = (msg, n_prompt, prefill_s), []
        stream = generate_stream_async(self.runtime, self.tokenizer, [last], self.sampler, self.max_tokens,
                                       self.stops, self.slot, lookahead=self.lookahead)
        try:
            async for item in stream:
                if isinstance(item, GenerationStats):
                    self._finish(item, *self._turn)
                    self._turn = None
                else:
                    seen.append(item)
                yield item
        except (GeneratorExit, KeyboardInterrupt, asyncio.CancelledError):
            await stream.aclose()
            if self._turn is not None:  # stopped early: what was shown becomes the reply
                st = GenerationStats(ids=[t for t, _ in seen], text="".join(p for _, p in seen), stop_reason="stopped")
                self._finish(st, *self._turn, replay=True)
                self._turn = None
            raise

    def _message(self, message: str) -> str:
        msg = self.fmt.clean(message)
        if not msg:
            raise WebRwkvError("the message is empty; type some text")
        return msg

    def _can_regenerate(self) -> None:
        if self._saved is None or not self.history:
            raise WebRwkvError("there is no reply to regenerate yet; send a message first")

    async def reply_async(self, message: str) -> AsyncIterator[StreamItem]:
        """Stream the assistant's answer to `message`."""
        msg = self._message(message)
        ids = self._pending_ids + self.tokenizer.encode(self._pending + self.fmt.ask(msg))
        self._pending, self._pending_ids = "", []
        t0 = perf_counter()
        await feed_async(self.runtime, self.slot, ids[:-1])
        self._saved = (await self.runtime.get_state_async(self.slot), ids[-1], len(ids), perf_counter() - t0)
        async for item in self._stream(msg, ids[-1], len(ids), self._saved[3]):
            yield item

    async def regenerate_async(self) -> AsyncIterator[StreamItem]:
        """Stream a new answer to the last message, from the state saved before the last reply."""
        self._can_regenerate()
        self._restore()
        self._pending, self._pending_ids = "", []
        msg = self.history.pop()[0]
        _, last, n_prompt, prefill_s = self._saved
        async for item in self._stream(msg, last, n_prompt, prefill_s):
            yield item

    async def respond_async(self, messages: Sequence[dict]) -> AsyncIterator[StreamItem]:
        """Answer the last user message of an OpenAI-style conversation. The state is reused when the
        conversation extends the one read so far (a follow-up), or repeats it but its last reply (a
        regenerate); any other list (an edit, a deleted turn, a new system message) is read afresh."""
        system, turns, user = split_messages(messages)
        system = system or self.default_intro
        c = self.fmt.clean
        same = lambda a, b: [(c(u), c(r)) for u, r in a] == [(c(u), c(r)) for u, r in b]  # noqa: E731
        read = self.turns + self.history  # the turns the state holds
        if c(system) == c(self.intro) and same(turns, read):
            stream = self.reply_async(user)
        elif (c(system) == c(self.intro) and self.history and same(turns, read[:-1])
              and c(user) == c(self.history[-1][0])):
            stream = self.regenerate_async()
        else:
            self.reset(system, turns)
            stream = self.reply_async(user)
        try:
            async for item in stream:
                yield item
        finally:
            await stream.aclose()

    def transcript(self, messages: Sequence[dict]) -> str:
        """The text a conversation [{role, content}] is to the model (a last user message is asked)."""
        msgs = list(messages)
        if msgs and msgs[-1].get("role") == "user":
            system, turns, user = split_messages(msgs)
            tail = self.fmt.ask(user)
        else:
            system, turns, _ = split_messages([*msgs, {"role": "user", "content": "x"}])
            tail = ""
        return self.fmt.prelude(system or self.default_intro, [*self.examples, *turns]) + tail

    def reply(self, message: str) -> Iterator[StreamItem]:
        self._message(message)  # errors now, not at the first item
        return iterate_sync(self.reply_async(message))

    def regenerate(self) -> Iterator[StreamItem]:
        self._can_regenerate()
        return iterate_sync(self.regenerate_async())


class TextSession:
    """Text continued from a slot's state: each generate() reads its prompt after everything before it, and
    the last token of a reply (which generate_stream leaves unread) is read first the next time. Named
    states can be saved and restored, with what remains to be read."""

    def __init__(self, runtime: Any, tokenizer: Any, slot: int = 0, lookahead: int = LOOKAHEAD) -> None:
        self.runtime, self.tokenizer, self.slot, self.lookahead = runtime, tokenizer, slot, lookahead
        self.saved: dict[str, tuple] = {}
        self.reset()

    def reset(self) -> None:
        """An empty state; nothing pending."""
        self.runtime.reset(self.slot)
        self.pending: list[int] = []  # generated but not yet read
        self.tail = ""                # the last characters read (to separate chat turns)

    async def generate_async(self, prompt: str | Sequence[int], params: SamplerParams, max_tokens: int,
                             stop: Sequence[str] = (), eos_id: int | None = END_OF_TEXT,
                             separate: bool = False) -> AsyncIterator[StreamItem]:
        """Stream a continuation of the state after `prompt` (text or token ids); with `separate`, a blank
        line goes first when the text so far does not end in one."""
        if isinstance(prompt, str):
            text = prompt
            if separate and self.tail and not self.tail.endswith("\n\n"):
                text = ("\n" if self.tail.endswith("\n") else "\n\n") + text
            given = self.tokenizer.encode(text) if text else []
        else:
            given = [int(t) for t in prompt]
            text = self.tokenizer.decode([t for t in given if t != END_OF_TEXT])
        ids = self.pending + given
        if not ids:
            raise WebRwkvError("the prompt is empty; type some text")
        self.pending, out = [], []
        stream = generate_stream_async(self.runtime, self.tokenizer, ids, params, max_tokens, stop, self.slot,
                                       eos_id, self.lookahead)
        try:
            async for item in stream:
                if not isinstance(item, GenerationStats):
                    out.append(item[0])
                yield item
        finally:
            await stream.aclose()
            self.pending = out[-1:] if out else []  # the last token is not read yet
            read = text + self.tokenizer.decode([t for t in out if t != END_OF_TEXT])
            self.tail = (self.tail + read)[-16:]

    async def save_async(self, name: str) -> None:
        state = await self.runtime.get_state_async(self.slot)
        self.saved[str(name)] = ({k: np.array(v, copy=True) for k, v in state.items()}, list(self.pending), self.tail)

    def restore(self, name: str) -> None:
        if str(name) not in self.saved:
            raise WebRwkvError(f"no saved state named {name!r}; save one first")
        state, self.pending, self.tail = self.saved[str(name)]
        self.pending = list(self.pending)
        self.runtime.set_state(self.slot, {k: np.array(v, copy=True) for k, v in state.items()})
