"""Many streams at once, one per slot: prompts prefilled together, then every active slot decoded in the same
steps, with the tokens picked on the GPU for all slots when the runtime has a decoder (webrwkv.decode)."""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Any, AsyncIterator, Iterator, Sequence, Union

from .errors import WebRwkvError
from .generation import END_OF_TEXT, LOOKAHEAD, GenerationStats, TokenStream, Windows, _tokens, iterate_sync
from .sampling import SamplerParams


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


BatchItem = Union[tuple[int, int, str], BatchStats]


async def _prefill_all(runtime: Any, prompts: dict[int, list[int]]) -> None:
    """Every slot's prompt but its last token, in shared chunks, with no logits made."""
    for s, ids in prompts.items():
        if ids:
            runtime.push(s, ids)
    while any(runtime.pending(s) for s in prompts):
        await runtime.run_async(outputs=False)


async def _batch_gpu(runtime: Any, streams: dict[int, TokenStream], first: dict[int, int],
                     lookahead: int, t0: float) -> AsyncIterator[tuple[int, int, str]]:
    """All slots in the same decode windows, two in flight; when slots end, the windows in flight are read
    to their end, the ended slots rolled back, and the rest go on in a window of their own."""
    dec = runtime.decoder
    for s, ts in streams.items():
        dec.configure(s, ts.sampler, ts.vocab or None)
    win = Windows(dec, lookahead)
    left = {s: ts.max_tokens for s, ts in streams.items()}  # tokens each slot may still make
    nxt = dict(first)  # each live slot's next input token
    ended: list[tuple] = []
    win.submit(max(left.values()), dict(nxt))
    while win.queue:
        if not ended and len(win.queue) < win.depth and min(left[s] for s in nxt) > sum(x.n for x, _ in win.queue):
            win.submit(min(left[s] for s in nxt) - sum(x.n for x, _ in win.queue))
        w, firsts = win.queue.popleft()
        got = await dec.read_async(w)
        for s in w.slots:
            if s not in nxt:
                continue  # ended in an earlier window
            ran = [firsts[s]] + got[s][:-1]
            if win.queue:
                win.queue[0][1][s] = got[s][-1]
            ts, delivered = streams[s], 0
            for t in got[s][: left[s]]:
                item = ts.feed(t, drawn=True)
                delivered += 1
                if len(ts.stats.ids) == 1:
                    ts.stats.prefill_s = perf_counter() - t0
                yield (s, *item)
                if ts.done:
                    break
            left[s] -= delivered
            ts.stats.decode_s = perf_counter() - t0 - ts.stats.prefill_s
            nxt[s] = got[s][-1]
            if ts.done:
                ended.append((w, s, ran, delivered, win.after(s)))
                del nxt[s]
        if ended and not win.queue:  # every window that ran an ended slot is read
            for e in ended:
                win.settle(*e)
            ended = []
            if nxt:
                win.submit(max(left[s] for s in nxt), dict(nxt))


async def _batch_cpu(runtime: Any, streams: dict[int, TokenStream], first: dict[int, int],
                     t0: float) -> AsyncIterator[tuple[int, int, str]]:
    for s, tok in first.items():
        runtime.push(s, [tok])
    active, idle = set(first), 0
    while active:
        out = await runtime.run_async()
        ready = [(s, out[s]) for s in sorted(active) if s in out]
        idle = 0 if ready else idle + 1
        if idle > runtime.token_chunk_size + 1:
            raise WebRwkvError("the runtime stopped returning logits; is another stream using its slots?")
        for s, logits in ready:
            ts = streams[s]
            token, piece = ts.step(logits)
            if len(ts.stats.ids) == 1:
                ts.stats.prefill_s = perf_counter() - t0
            else:
                ts.stats.decode_s = perf_counter() - t0 - ts.stats.prefill_s
            if ts.done:
                active.discard(s)
            else:
                runtime.push(s, [token])
            yield s, token, piece


async def generate_batch_async(runtime: Any, tokenizer: Any, prompts: Sequence[Sequence[int]],
                               sampler_params: SamplerParams | None = None, max_tokens: int = 64,
                               stop: Sequence[str] = (), eos_id: int | None = END_OF_TEXT,
                               lookahead: int = LOOKAHEAD) -> AsyncIterator[BatchItem]:
    """Run prompt i on slot i, all at once; yield (slot, token_id, text_piece), then a BatchStats.
    Each slot draws its own random numbers (the seed with the slot as the stream); every slot ends where
    its own generate_stream would leave it."""
    params = sampler_params or SamplerParams()
    t0 = perf_counter()
    streams = {s: TokenStream(tokenizer, params, max_tokens, stop, len(_tokens(ids)), eos_id, stream=s)
               for s, ids in enumerate(prompts)}
    live = {s: list(map(int, prompts[s])) for s, ts in streams.items() if not ts.done}
    await _prefill_all(runtime, {s: ids[:-1] for s, ids in live.items()})
    first = {s: ids[-1] for s, ids in live.items()}
    if first:
        gen = (_batch_gpu(runtime, {s: streams[s] for s in first}, first, lookahead, t0)
               if runtime.decoder is not None and lookahead > 0 else
               _batch_cpu(runtime, {s: streams[s] for s in first}, first, t0))
        try:
            async for item in gen:
                yield item
        finally:
            await gen.aclose()
    yield BatchStats(slots={s: ts.stats for s, ts in streams.items()}, wall_s=perf_counter() - t0 if streams else 0.0)


def generate_batch(runtime: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *args: Any,
                   **kw: Any) -> Iterator[BatchItem]:
    """generate_batch_async for runtimes that never suspend (native GPU, numpy reference)."""
    return iterate_sync(generate_batch_async(runtime, tokenizer, prompts, *args, **kw))
