"""Continuous batching for the API server: requests take free slots, their prompts are prefilled between decode
windows, and every active slot runs in the same windows, each slot's tokens picked on the GPU (webrwkv.decode).

The scheduler owns the runtime and runs in a thread of its own: on the native GPU every wait for a window is a
blocking call, and the HTTP event loop must stay free meanwhile. Requests come in with submit() from any
thread; their tokens go out through each Job's `emit`, called from the scheduler's thread.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DeviceLostError, ServerBusyError, WebRwkvError
from .generation import END_OF_TEXT, LOOKAHEAD, GenerationStats, TokenStream, Windows
from .sampling import SamplerParams

# emit(pieces, stats, error): [(token, text)] as they are picked; then once the GenerationStats (or an error)
Emit = Callable[[list, "GenerationStats | None", "BaseException | None"], None]


class Job:
    """One request: prompt ids, sampling, limits. `cached` is how many prompt tokens its slot's state already
    held (they were not read again); `cancel()` on the scheduler ends it (a client that went away)."""

    def __init__(self, prompt_ids: Sequence[int], params: SamplerParams, max_tokens: int, stop: Sequence[str] = (),
                 eos_id: int | None = END_OF_TEXT, emit: Emit | None = None) -> None:
        self.prompt_ids = [int(t) for t in prompt_ids]
        if not self.prompt_ids:
            raise WebRwkvError("the prompt has no tokens; give a prompt (an empty text starts from token 0)")
        if max_tokens < 1:
            raise WebRwkvError(f"max_tokens must be at least 1, got {max_tokens}")
        self.params, self.max_tokens, self.stop, self.eos_id = params.validate(), max_tokens, list(stop), eos_id
        self.emit = emit or (lambda pieces, stats, error: None)
        self.cancelled = False
        self.slot: int | None = None
        self.cached = 0
        self.t_submit = self.t_admit = perf_counter()
        self.ts: TokenStream | None = None


@dataclass
class _Live:
    """A job in the decode windows: the tokens it may still make and its next input token."""

    job: Job
    left: int
    nxt: int
    t_join: float


class Scheduler:
    """Requests on the slots of one runtime (max_batch slots), at most `max_queue` of them waiting.

    Every stream draws its random numbers as stream 0 (what generate_stream on slot 0 draws), so a seed gives
    the same tokens whichever slot the request gets and whatever else runs. With `reuse_state`, a slot keeps
    its state after a stream (rolled back to exactly what it read: the prompt and every token sent but the
    last) and a later prompt that starts with those tokens reads only the rest there.
    """

    def __init__(self, runtime: Any, tokenizer: Any, max_queue: int = 64, lookahead: int = LOOKAHEAD,
                 reuse_state: bool = True) -> None:
        self.rt, self.tok, self.max_queue, self.reuse = runtime, tokenizer, max_queue, reuse_state
        self.gpu = runtime.decoder is not None and lookahead > 0
        self.lookahead = lookahead
        self.vocab = int(getattr(tokenizer, "vocab_size", 0) or 0)
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._free: list[int] = list(range(runtime.max_batch))  # least recently used first
        self._read: dict[int, list[int]] = {s: [] for s in self._free}  # what each free slot's state has read
        self._prefill: dict[int, Job] = {}  # slots whose prompt is being read
        self._live: dict[int, _Live] = {}
        self._closed = False
        self._fatal: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.served = self.generated = self.cached_tokens = 0

    # -- any thread ------------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        self._thread = threading.Thread(target=self._main, name="webrwkv-scheduler", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the window in flight; waiting and running jobs end with an error."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a job (ServerBusyError when `max_queue` jobs already wait for a slot)."""
        with self._cv:
            if self._fatal is not None:
                raise WebRwkvError(f"the engine stopped: {self._fatal}; restart the server")
            if self._closed:
                raise ServerBusyError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise ServerBusyError(f"all {self.rt.max_batch} slots are busy and {len(self._waiting)} requests "
                                      "are waiting (the server's --max-queue); try again shortly")
            job.t_submit = perf_counter()
            self._waiting.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """End a job now (its slot is rolled back to what was sent and freed at the next window's end)."""
        with self._cv:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
            self._cv.notify()

    def status(self) -> dict[str, Any]:
        with self._cv:
            return {"slots": self.rt.max_batch, "busy": len(self._live) + len(self._prefill),
                    "waiting": len(self._waiting), "max_queue": self.max_queue, "served": self.served,
                    "generated_tokens": self.generated, "cached_tokens": self.cached_tokens,
                    "error": str(self._fatal) if self._fatal else None}

    def free_slots(self) -> dict[int, list[int]]:
        """{slot: the tokens its state has read} for the free slots (what a new prompt may continue)."""
        with self._cv:
            return {s: list(self._read[s]) for s in self._free}

    # -- the scheduler's thread ----------------------------------------------------------------------
    def _main(self) -> None:
        while True:
            with self._cv:
                while not (self._closed or self._waiting):
                    self._cv.wait()
                if self._closed:
                    break
            try:
                self._serve_gpu() if self.gpu else self._serve_cpu()
            except BaseException as e:  # noqa: BLE001 - every job in flight learns why; the loop goes on
                self._fail_all(e)
                if isinstance(e, DeviceLostError) or not isinstance(e, Exception):
                    with self._cv:
                        self._fatal = e
                    break
        self._fail_all(WebRwkvError("the server is shutting down"), waiting=True)

    def _emit(self, job: Job, pieces: list, stats: GenerationStats | None = None,
              error: BaseException | None = None) -> None:
        try:
            job.emit(pieces, stats, error)
        except Exception:  # noqa: BLE001 - a consumer that went away must not stop the others
            job.cancelled = True

    def _fail_all(self, error: BaseException, waiting: bool = False) -> None:
        jobs = [lv.job for lv in self._live.values()] + list(self._prefill.values())
        for s in [*self._live, *self._prefill]:
            try:
                self.rt.reset(s)
            except Exception:  # noqa: BLE001 - a lost device: the slot is unusable anyway
                pass
            self._release(s, [])
        self._live.clear()
        self._prefill.clear()
        if waiting:
            with self._cv:
                jobs += list(self._waiting)
                self._waiting.clear()
        for job in jobs:
            if not job.cancelled:
                self._emit(job, [], None, error)

    def _release(self, slot: int, read: list[int]) -> None:
        with self._cv:
            self._read[slot] = read if self.reuse else []
            if not self.reuse and read:
                self.rt.reset(slot)
            self._free.append(slot)

    def _take_slot(self, ids: list[int]) -> tuple[int, int]:
        """(slot, prompt tokens its state already read): the free slot whose state read the longest start of
        `ids` (not all of it: the last token must run as the first decode step), else the least recently used."""
        best, n = None, -1
        for s in self._free:
            r = self._read[s]
            if len(r) > n and len(r) < len(ids) and ids[: len(r)] == r:
                best, n = s, len(r)
        if best is None:
            best, n = self._free[0], 0
        self._free.remove(best)
        if n == 0 and self._read[best]:
            self.rt.reset(best)
        self._read[best] = []
        return best, n

    def _admit(self) -> bool:
        """Between windows: new jobs take free slots, one chunk of prefill runs, prefilled jobs join the
        decode windows (their last prompt token runs as the first decode step). True when some joined."""
        with self._cv:
            while self._waiting and self._free:
                job = self._waiting.popleft()
                s, n = self._take_slot(job.prompt_ids)
                job.slot, job.cached = s, n
                self._prefill[s] = job
        for s, job in list(self._prefill.items()):
            if job.cancelled:
                del self._prefill[s]
                self.rt.reset(s)
                self._release(s, [])
            elif job.ts is None:
                job.ts = TokenStream(self.tok, job.params, job.max_tokens, job.stop, len(job.prompt_ids),
                                     job.eos_id, stream=0)
                job.t_admit = perf_counter()
                if len(job.prompt_ids) - 1 > job.cached:
                    self.rt.push(s, job.prompt_ids[job.cached: -1])
        if any(self.rt.pending(s) for s in self._prefill):
            self.rt.run(outputs=False)  # one chunk (token_chunk_size) shared by the prompts being read
            if not self.gpu:
                while any(self.rt.pending(s) for s in self._prefill):
                    self.rt.run(outputs=False)
        joined = False
        for s, job in list(self._prefill.items()):
            if not self.rt.pending(s):
                if self.gpu:
                    self.rt.decoder.configure(s, job.ts.sampler, self.vocab or None)
                with self._cv:
                    self._live[s] = _Live(job, job.max_tokens, job.prompt_ids[-1], perf_counter())
                    del self._prefill[s]
                joined = True
        return joined

    def _deliver(self, s: int, tokens: list[int], drawn: bool, cancelled: bool) -> tuple[int, bool]:
        """Feed a slot's new tokens to its stream (none when `cancelled`) and send the pieces;
        (tokens delivered, stream over)."""
        lv = self._live[s]
        ts, pieces = lv.job.ts, []
        if not cancelled:
            for t in tokens[: lv.left]:
                pieces.append(ts.feed(t, drawn=drawn))
                if len(ts.stats.ids) == 1:
                    ts.stats.prefill_s = perf_counter() - lv.job.t_admit
                if ts.done:
                    break
        lv.left -= len(pieces)
        if pieces:
            self._emit(lv.job, pieces)
        return len(pieces), ts.done or cancelled

    def _finish(self, s: int) -> None:
        """The stream on slot s is over (its state is settled): send its stats, free the slot."""
        job = self._live[s].job
        st = job.ts.stats
        st.decode_s = perf_counter() - job.t_admit - st.prefill_s
        with self._cv:  # one step for status(): the counters, the free slot and the live set agree
            self.served += 1
            self.generated += len(st.ids)
            self.cached_tokens += job.cached
            self._release(s, (job.prompt_ids + st.ids)[:-1])
            del self._live[s]
        if not job.cancelled:
            self._emit(job, [], st)

    def _want_slots(self) -> bool:
        """New work waits between windows: prompts being read, or waiting jobs and a free slot."""
        with self._cv:
            return bool(self._prefill or (self._waiting and self._free))

    def _serve_gpu(self) -> None:
        """Windows for every live slot (Tuning.windows_in_flight in flight); when a stream ends or new work
        waits, the windows in flight are read to their end, ended streams are rolled back and new ones admitted."""
        dec = self.rt.decoder
        win = Windows(dec, self.lookahead)
        ended: list[tuple] = []
        while True:
            self._check_open()
            if not win.queue:
                for e in ended:
                    win.settle(*e)
                    self._finish(e[1])
                ended = []
                if self._admit():
                    win.size = 1  # a new stream's first tokens come after one step
                if not self._live:
                    if self._prefill:
                        continue
                    return
                win.submit(max(lv.left for lv in self._live.values()),
                           {s: lv.nxt for s, lv in self._live.items()})
            elif not ended and len(win.queue) < win.depth and not self._want_slots():
                room = min(lv.left for lv in self._live.values()) - sum(x.n for x, _ in win.queue)
                if room > 0:
                    win.submit(room)  # the next window runs while this one is read
            w, firsts = win.queue.popleft()
            got = dec.read(w)
            for s in w.slots:
                if s not in self._live or any(e[1] == s for e in ended):
                    continue
                ran = [firsts[s]] + got[s][:-1]
                if win.queue:
                    win.queue[0][1][s] = got[s][-1]
                delivered, over = self._deliver(s, got[s], True, self._live[s].job.cancelled)
                self._live[s].nxt = got[s][-1]
                if over:
                    ended.append((w, s, ran, delivered, win.after(s)))

    def _serve_cpu(self) -> None:
        """Without a GPU decoder (the numpy reference): every live slot's logits each step, numpy sampling."""
        while True:
            self._check_open()
            self._admit()
            for s in [s for s, lv in self._live.items() if lv.job.cancelled]:
                self._finish(s)  # its state read the prompt and every token sent but the last
            if not self._live:
                if self._prefill:
                    continue
                return
            for s, lv in self._live.items():
                self.rt.push(s, [lv.nxt])
            out: dict = {}
            while any(s not in out for s in self._live):
                if not any(self.rt.pending(s) for s in self._live if s not in out):
                    raise WebRwkvError("the runtime returned no logits for a slot; is something else using it?")
                out.update(self.rt.run())
            for s in list(self._live):
                logits = np.asarray(out[s]).reshape(-1)
                ts = self._live[s].job.ts
                tok = ts.sampler.sample(logits[: self.vocab] if 0 < self.vocab < logits.shape[0] else logits)
                _, over = self._deliver(s, [tok], False, cancelled=False)
                self._live[s].nxt = tok
                if over:
                    self._finish(s)

    def _check_open(self) -> None:
        if self._closed:
            raise WebRwkvError("the server is shutting down")
