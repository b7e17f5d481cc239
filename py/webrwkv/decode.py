"""Decode windows on the GPU: each step's next token is picked by shaders/sample.wgsl (greedy or sampled,
per slot) and becomes the next step's input on the GPU, so a window of steps queues without read-backs.

The state of every slot is copied at each window's start (a copy for each window that may be in flight,
Tuning.windows_in_flight, 2 by default, while the one before it is read), so a stream that ends inside a
window is rolled back to exactly where step-by-step decoding would have left it: the copy is restored and
the tokens it should have read are run again one step each, through the same kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SamplingError, WebRwkvError

CAP = 128               # ids per slot in the ring
SAMPLE_LOADS = 4        # loads in flight per thread of the sampler's passes
DRAW_LOADS = 4          # vec4 of a thread's chunk the sampler's draw loads at once
SEARCH_PROBES = 4       # thresholds a pass of the sampler's top-k / top-p search tries (13 passes, not 30); Chromium's
                        # CPU adapter compiled the kernel in 0.76 s with 4, 24 s with 6, and lost the device with 8
ERRORS = {1: "the logits hold NaN or infinity: the model produced invalid numbers; check the model file, "
             "or compare with --backend reference", 2: "every token is banned; ban fewer tokens"}


@dataclass
class Window:
    """Steps queued for some slots: n steps each; `first` is each slot's ring count before the window."""

    slots: list[int]
    n: int
    first: dict[int, int]
    snap: int


def _f32(v: float) -> int:
    return int(np.float32(v).view(np.uint32))


def pack_params(sampler: Any, vocab: int) -> np.ndarray:
    """A Sampler's parameters as shaders/sample.wgsl reads them (16 u32 words)."""
    p = sampler.params
    words = np.zeros(16, np.uint32)
    words[:12] = (_f32(p.temperature), _f32(p.top_p), p.top_k, _f32(p.min_p), _f32(p.presence_penalty),
                  _f32(p.frequency_penalty), _f32(p.penalty_decay), sampler.seed & 0xFFFFFFFF,
                  (sampler.seed >> 32) & 0xFFFFFFFF, sampler.stream & 0xFFFFFFFF, vocab,
                  int(bool(p.presence_penalty or p.frequency_penalty)) | 2 * int(bool(p.banned)))
    return words


def sample_pipeline(k: Any, vocab: int, tok0: int, wg: int | None = None) -> Any:
    """shaders/sample.wgsl for a vocabulary and a metadata layout: on a GPU, workgroups as wide as the device
    allows (up to 1024 threads hide more memory latency in its passes over the vocabulary); 256 on a CPU
    adapter, which runs a workgroup's threads a few at a time."""
    wg_, wg = wg, 256
    while not k.dev.software and wg < 1024 and wg * 2 <= k.dev.limits.get("max_workgroup_invocations", 256):
        wg *= 2
    return k.get("sample", VOCAB=vocab, WG=wg_ or wg, U=SAMPLE_LOADS, TOK0=tok0, CAP=CAP, K=SEARCH_PROBES, D=DRAW_LOADS)


def pack_state(sampler: Any, V: int) -> np.ndarray:
    """A Sampler's draw counter, decayed counts, generated and banned ids: a slot's sampler state (its
    scratch rows, a buffer of their own, need no values)."""
    nw = -(-V // 32)
    st = np.zeros(8 + V + 2 * nw, np.uint32)
    st[0] = sampler.step
    counts = st[8: 8 + V].view(np.float32)
    seen, banned = st[8 + V: 8 + V + nw], st[8 + V + nw:]
    for tok, c in sampler.occurrences().items():
        if 0 <= tok < V:
            counts[tok] = c
            seen[tok // 32] |= np.uint32(1 << (tok % 32))
    for tok in sampler.params.banned:
        if 0 <= tok < V:
            banned[tok // 32] |= np.uint32(1 << (tok % 32))
    return st


def state_words(V: int) -> int:
    """u32 words of one slot's sampler state: header, counts, two bit sets."""
    return 8 + V + 2 * -(-V // 32)


def scratch_words(V: int) -> int:
    """Floats of one slot's sampler scratch: two rows (z, w) of vec4 over the vocabulary."""
    return 8 * -(-V // 4)


class GpuDecoder:
    """The GPU sampler state of a Runtime's slots and its decode windows."""

    def __init__(self, rt: Any) -> None:
        self.rt, self.dev = rt, rt.dev
        B, V = rt.max_batch, rt.info.vocab
        self.stride = state_words(V)
        self.params = self.dev.buffer(4 * 16 * B, label="sampler params")
        self.state = self.dev.buffer(4 * self.stride * B, label="sampler state")
        self.ids = self.dev.buffer(4 * (CAP + 2) * B, label="sampled ids")
        self.scratch = self.dev.buffer(4 * scratch_words(V) * B, label="sampler scratch")
        self.depth = max(2, rt.k.tuning.windows_in_flight)  # windows in flight at most
        self.max_window = CAP // self.depth  # steps a window, so that all of them in flight fit in the ring
        self.snaps: list[Any] = [None] * self.depth
        self.count = [0] * B     # ids each slot's ring holds (the GPU's count, as the CPU expects it)
        self.layout: list[int] | None = None  # slots of the last window; their next tokens are on the GPU
        self.windows = 0
        self._steps: dict[tuple, list] = {}
        self._pipe = sample_pipeline(rt.k, V, rt.tok0)

    # -- per stream ------------------------------------------------------------------------------
    def configure(self, slot: int, sampler: Any, vocab: int | None = None) -> None:
        """Start a stream on `slot` with a webrwkv.sampling.Sampler: its parameters, its draw counter and
        penalty counters go to the GPU; the slot's ring of ids starts empty."""
        s, V = self.rt.check_slot(slot), self.rt.info.vocab
        self.dev.write(self.params, 4 * 16 * s, pack_params(sampler, min(vocab or V, V)))
        self.dev.write(self.state, 4 * self.stride * s, pack_state(sampler, V))
        self.dev.write(self.ids, 4 * (CAP + 2) * s, np.zeros(2, np.uint32))
        self.count[s] = 0
        if self.layout is not None and s in self.layout:
            self.layout = None

    # -- windows ---------------------------------------------------------------------------------
    def forget_steps(self) -> None:
        """Drop the cached step op lists (the runtime rebuilt its own)."""
        self._steps.clear()

    def step_ops(self, key: tuple) -> list:
        """A decode step as one op list, the sample kernel after the head (cached: the same objects). One
        submit a step: a window queues its steps ahead of the GPU, so splitting a step for the GPU to start
        early (Tuning.submit_ops, as a prefill chunk is) only adds submits (an H200, v7 L24 / L32 greedy:
        509 / 282 tok/s split in parts of 48, 534 / 293 whole)."""
        steps = self._steps.get(key)
        if steps is None:
            op = (self._pipe, self.dev.bind(self._pipe, [self.rt.meta, self.rt.logits, self.params, self.state,
                                                        self.ids, self.scratch]), (key[1], 1, 1))
            steps = self._steps[key] = [[o for part in self.rt.parts(key) for o in part] + [op]]
        return steps

    def submit(self, tokens: dict[int, int] | None, n: int) -> Window:
        """Queue n decode steps for the slots in `tokens` ({slot: its next input token}), or, with None,
        for the slots of the last window, whose next tokens the GPU already holds."""
        if not 1 <= n <= self.max_window:
            raise WebRwkvError(f"a decode window has 1..{self.max_window} steps, not {n}")
        if tokens is not None:
            slots = sorted(self.rt.check_slot(s) for s in tokens)
            key, _, _ = self.rt.write_step([(s, [int(tokens[s])], True) for s in slots])
            self.layout = slots
        elif self.layout is None:
            raise WebRwkvError("the next tokens of these slots are not on the GPU; pass them")
        else:
            slots = self.layout
            key = (len(slots), len(slots), len(slots), 1)
        snap = self.windows % self.depth
        if self.snaps[snap] is None:
            self.snaps[snap] = self.dev.buffer(4 * self.rt.slot_floats * self.rt.max_batch, label="state copy")
        self.dev.copy(self.rt.state, 0, self.snaps[snap], 0, 4 * self.rt.slot_floats * self.rt.max_batch)
        self.dev.encode_repeat(self.step_ops(key), n, self.rt.k.tuning.window_steps)
        w = Window(slots, n, {s: self.count[s] for s in slots}, snap)
        for s in slots:
            self.count[s] += n
        self.windows += 1
        return w

    def _parse(self, w: Window, raw: bytes) -> dict[int, list[int]]:
        a = np.frombuffer(raw, np.uint32).reshape(-1, CAP + 2)
        out = {}
        for s in w.slots:
            err = int(a[s, 1])
            if err:
                raise SamplingError(ERRORS.get(err, f"the GPU sampler failed (code {err})"))
            if int(a[s, 0]) < w.first[s] + w.n:
                raise WebRwkvError(f"slot {s}: the GPU wrote {int(a[s, 0]) - w.first[s]} of {w.n} tokens")
            out[s] = [int(a[s, 2 + (w.first[s] + j) % CAP]) for j in range(w.n)]
        return out

    def read(self, w: Window) -> dict[int, list[int]]:
        """Wait for the window and return each slot's n chosen ids (SamplingError on NaN logits)."""
        return self._parse(w, self.dev.read(self.ids, 0, 4 * (CAP + 2) * self.rt.max_batch))

    async def read_async(self, w: Window) -> dict[int, list[int]]:
        return self._parse(w, await self.dev.read_async(self.ids, 0, 4 * (CAP + 2) * self.rt.max_batch))

    def rollback(self, w: Window, slot: int, ran: list[int]) -> None:
        """Put `slot` back where it was before window w, then run the tokens `ran` one step each: the
        state step-by-step decoding has after them. Later windows of the slot are void."""
        s, n = self.rt.check_slot(slot), 4 * self.rt.slot_floats
        self.dev.copy(self.snaps[w.snap], s * n, self.rt.state, s * n, n)
        for tok in ran:
            key, _, _ = self.rt.write_step([(s, [int(tok)], True)], outs=False)
            for part in self.rt.parts(key):
                self.dev.encode(part)
        self.layout = None
