"""Batched GPU runtime: slots with queued tokens, chunked steps of cached ops, state kept on the GPU.

`run()` (native) and `run_async()` (every backend) share all logic: `_submit()` encodes one step and
says what to read back, `_finish()` turns the bytes into logits.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import GpuError, WebRwkvError
from .formats import weight_format
from .kernels import Kernels, Tuning
from .layers import LayerBuilder, Upload, base_activations, build, default_upload, pack_vecs, state_geometry
from .models import VERSIONS, ModelInfo, initial_state, state_layout

State = dict[str, np.ndarray]
# tokens per run by default: 512-token chunks give 1.3-1.5x the prefill of 128 on large models (bench/RESULTS.md)
DEFAULT_CHUNK = 512
# at most this many rows of logits per run when every token's logits are asked for (128 rows of a 65536
# vocabulary are 32 MiB); such runs take fewer tokens
ALL_LOGITS_ROWS = 128


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"



def check_limits(dev: Any, info: ModelInfo, max_batch: int = 1, token_chunk_size: int = DEFAULT_CHUNK) -> None:
    """Refuse, before allocating or reading any weight, a model/batch the adapter's limits cannot hold:
    it needs only the model's header (ModelInfo), so a loader calls it before widening any tensor."""
    lim = dev.limits
    binding, maxbuf = lim["max_storage_binding"], lim["max_buffer_size"]
    C, V, F = info.n_embd, info.vocab, info.dim_ffn
    rows = max(token_chunk_size, max_batch)
    widest = 2 * max(C, F)
    if widest > min(binding, maxbuf):
        raise GpuError(f"one weight row ({widest} bytes) exceeds maxStorageBufferBindingSize ({binding}); "
                       "this adapter cannot run the model, even with quantization")
    ls, _ = state_geometry(state_layout(info))
    need = {"the state of all slots": 4 * ls * info.n_layer * max_batch, "one logits row": 4 * V}
    acts = {**base_activations(info, rows), **VERSIONS[info.version].activations(info, rows)}
    need.update({f"activation '{k}'": 4 * n for k, n in acts.items()})
    for what, n in need.items():
        if n > binding or n > maxbuf:
            lname = "maxStorageBufferBindingSize" if n > binding else "maxBufferSize"
            raise GpuError(f"{what} needs {_mib(n)}, above the adapter's {lname} "
                           f"({_mib(min(binding, maxbuf))}); lower max_batch / token_chunk_size, "
                           "or use a smaller or quantized model")
    if lim["max_storage_buffers_per_stage"] < 7:
        raise GpuError("the adapter allows fewer than 7 storage buffers per shader stage; webrwkv needs 7")

class Runtime:
    """The runtime API of docs/ARCHITECTURE.md on a webrwkv.gpu Device.

    Runtime(device, info, weights, max_batch, token_chunk_size): weights are canonical arrays
    (webrwkv.models.load_weights); they are converted to packed fp16 on upload.
    `token_chunk_size` may be lowered later (buffers are sized for the value given here).
    `upload(dev, matrix, label, fmt) -> (row blocks, padded K)` puts each weight matrix on the GPU
    (default: fmt.upload); a loader whose matrices arrive later passes deferred matrices
    (see layers.deferred) with its own upload, and its vectors with write_vectors() once known.
    quant names the layers' weight format (webrwkv.formats): "none" (fp16), "int8" (per-row scales) or
    "nf4" (NF4 codes, one scale per 64 weights); embedding and head stay fp16.
    """

    def __init__(self, device: Any, info: ModelInfo, weights: dict, max_batch: int = 1,
                 token_chunk_size: int = DEFAULT_CHUNK, tuning: Tuning | None = None, upload: Upload = default_upload,
                 quant: Any = "none") -> None:
        if max_batch < 1 or token_chunk_size < 1:
            raise WebRwkvError("max_batch and token_chunk_size must be at least 1")
        fmt = weight_format(quant)
        self.dev, self.info, self.version = device, info, VERSIONS[info.version]
        self.max_batch, self.token_chunk_size = max_batch, token_chunk_size
        self.rows = max(token_chunk_size, max_batch)
        C, V = info.n_embd, info.vocab
        if C % 32:
            raise GpuError(f"n_embd {C} is not a multiple of 32; the GPU kernels need that")
        self.geometry = state_geometry(state_layout(info))
        self.ls, self.offs = self.geometry
        self.slot_floats = self.ls * info.n_layer
        self._check_limits()
        self.k = Kernels(device, tuning)
        self.k.max_rows = self.rows
        dev = device
        # step metadata: header, segment table, tokens, output rows
        self.tok0 = 8 + 4 * max_batch
        self.out0 = self.tok0 + self.rows
        self.meta = dev.buffer(4 * (self.out0 + self.rows), label="meta")
        b = {"meta": self.meta}
        for name, n in self._activations().items():
            b[name] = dev.buffer(4 * n, label=name)
        self.logit_rows = min(self.rows, max(ALL_LOGITS_ROWS, max_batch), dev.limits["max_storage_binding"] // (4 * V))
        if self.logit_rows < max_batch:
            raise GpuError(f"logits of {max_batch} slots ({_mib(4 * V * max_batch)}) exceed the adapter's "
                           "maxStorageBufferBindingSize; lower max_batch")
        b["logits"] = self.logits = dev.buffer(4 * self.logit_rows * V, label="logits")
        self.state = dev.buffer(4 * self.slot_floats * max_batch, label="state")
        self.scratch = dev.buffer(4 * self.slot_floats, label="state-scratch")
        vecs, vec_off, vs = pack_vecs(info, weights, self.version.VECS)
        self.vecs = dev.buffer(vecs.nbytes, label="vecs")
        dev.write(self.vecs, 0, vecs)
        lb = LayerBuilder(self.k, info, weights, b, self.vecs, vec_off, vs, self.state, self.geometry,
                          self.slot_floats, max_batch, upload, fmt)
        self.gens, self.layer_spans = build(lb, self.version, info, self.logits)  # spans: each block's gens
        self.weight_bytes, self.split_matrices = lb.weight_bytes, lb.split_matrices
        self._ops: dict[tuple, list] = {}
        self._decoder: Any = None
        self._pending: list[list[int]] = [[] for _ in range(max_batch)]
        self._done: list[list[np.ndarray]] = [[] for _ in range(max_batch)]
        # what reset() returns each slot to: a state-tuned checkpoint's state (its time_state tensors), else zeros
        self._model_init = self._pack(initial_state(info, weights))
        self._inits = [self._model_init] * max_batch
        for s in range(max_batch):
            dev.write(self.state, 4 * s * self.slot_floats, self._model_init)
        lb.w = {}  # every matrix is on the GPU (or in a deferred upload): let go of the arrays / file views

    @property
    def decoder(self) -> Any:
        """The GPU decoder (webrwkv.decode.GpuDecoder): tokens picked on the GPU, windows of steps."""
        if self._decoder is None:
            from .decode import GpuDecoder

            self._decoder = GpuDecoder(self)
        return self._decoder

    def use_gemv_prefill(self) -> None:
        """Run every chunk of tokens through the GEMV kernel, token rows in parallel (a browser whose WGSL
        compiler refuses the tiled GEMM kernel); the cached steps are rebuilt."""
        self.k.tuning.gemv_max_t = 1 << 30
        self._ops.clear()
        if self._decoder is not None:
            self._decoder.forget_steps()

    @classmethod
    def from_path(cls, path: Any, adapter: Any = None, max_batch: int = 1, token_chunk_size: int = DEFAULT_CHUNK,
                  **device_options: Any) -> "Runtime":
        """Load a model file and open the native device in one call."""
        from .gpu import open_device
        from .models import load_index, load_weights

        dev = open_device("native", adapter, **device_options)
        check_limits(dev, load_index(path)[0], max_batch, token_chunk_size)  # before any tensor is read
        info, w = load_weights(path, keep_fp16=True)  # fp16 matrices as file views: no float32 copy
        return cls(dev, info, w, max_batch, token_chunk_size)

    def write_vectors(self, weights: dict) -> None:
        """Replace the per-channel vectors (layer norms, mixes, decays) with those in `weights`
        (canonical arrays by name, as load_weights gives); the compiled steps stay valid."""
        packed, _, _ = pack_vecs(self.info, weights, self.version.VECS)
        self.dev.write(self.vecs, 0, packed)

    # -- limits ------------------------------------------------------------------------------
    def _activations(self) -> dict[str, int]:
        """Float counts of every activation buffer (the version's and the common ones)."""
        return {**base_activations(self.info, self.rows), **self.version.activations(self.info, self.rows)}

    def _check_limits(self) -> None:
        check_limits(self.dev, self.info, self.max_batch, self.token_chunk_size)

    # -- state -------------------------------------------------------------------------------
    def _pack(self, state: State) -> np.ndarray:
        out = np.zeros(self.slot_floats, np.float32)
        for name, shape in state_layout(self.info):
            if name not in state or tuple(np.shape(state[name])) != tuple(shape):
                got = "missing" if name not in state else f"shape {list(np.shape(state[name]))}"
                raise WebRwkvError(f"state entry '{name}' is {got}; this model needs {list(shape)}")
            layer, key = name.split(".")[1], name.split(".")[2]
            off = int(layer) * self.ls + self.offs[key][0]
            out[off: off + int(np.prod(shape))] = np.asarray(state[name], np.float32).reshape(-1)
        return out

    def _unpack(self, raw: bytes) -> State:
        a = np.frombuffer(raw, np.float32)
        out = {}
        for name, shape in state_layout(self.info):
            layer, key = name.split(".")[1], name.split(".")[2]
            off = int(layer) * self.ls + self.offs[key][0]
            out[name] = a[off: off + int(np.prod(shape))].reshape(shape).copy()
        return out

    def check_slot(self, slot: int) -> int:
        """`slot` as an int, or WebRwkvError when the runtime has no such slot."""
        if not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.max_batch:
            raise WebRwkvError(f"slot {slot!r} does not exist: use 0..{self.max_batch - 1}")
        return int(slot)

    def get_state(self, slot: int) -> State:
        """The slot's state as a dict of float32 arrays (docs/ARCHITECTURE.md layout)."""
        s = self.check_slot(slot)
        return self._unpack(self.dev.read(self.state, 4 * s * self.slot_floats, 4 * self.slot_floats))

    async def get_state_async(self, slot: int) -> State:
        s = self.check_slot(slot)
        return self._unpack(await self.dev.read_async(self.state, 4 * s * self.slot_floats, 4 * self.slot_floats))

    def set_state(self, slot: int, state: State) -> None:
        """Overwrite the slot's state (e.g. restore one saved with get_state)."""
        self.dev.write(self.state, 4 * self.check_slot(slot) * self.slot_floats, self._pack(state))

    def reset(self, slot: int) -> None:
        """The slot's initial state (set_initial_state) and no pending input."""
        s = self.check_slot(slot)
        self.dev.write(self.state, 4 * s * self.slot_floats, self._inits[s])
        self._pending[s], self._done[s] = [], []

    def set_initial_state(self, state: State | None, slot: int | None = None, own: bool = False) -> None:
        """Make `state` (e.g. a state file's, webrwkv.models.states.read_state) what reset() returns the slot
        to, or every slot's when slot is None, and reset it now; None goes back to the model's own. own=True
        makes `state` the model's own (the streamed loader: a tuned checkpoint's state arrives after __init__)."""
        packed = self._model_init if state is None else self._pack(state)
        if own:
            self._model_init = packed
        for s in range(self.max_batch) if slot is None else [self.check_slot(slot)]:
            self._inits[s] = packed
            self.reset(s)

    def clone(self, src: int, dst: int) -> None:
        """Copy src's state into dst (on the GPU)."""
        n = 4 * self.slot_floats
        self.dev.copy(self.state, self.check_slot(src) * n, self.scratch, 0, n)
        self.dev.copy(self.scratch, 0, self.state, self.check_slot(dst) * n, n)

    # -- input ---------------------------------------------------------------------------------
    def push(self, slot: int, tokens: Sequence[int]) -> None:
        """Queue tokens for a slot."""
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if toks.size == 0:
            raise WebRwkvError("no tokens to run: pass at least one token id")
        bad = toks[(toks < 0) | (toks >= self.info.vocab)]
        if bad.size:
            raise WebRwkvError(f"token id {int(bad[0])} is outside the vocabulary (0..{self.info.vocab - 1})")
        self._pending[self.check_slot(slot)].extend(int(t) for t in toks)

    def pending(self, slot: int) -> int:
        """How many queued tokens the slot still has."""
        return len(self._pending[self.check_slot(slot)])

    # -- steps ---------------------------------------------------------------------------------
    def _schedule(self, all_logits: bool) -> list[tuple[int, list[int], bool]]:
        active = [s for s in range(self.max_batch) if self._pending[s]]
        budget = max(1, min(self.token_chunk_size, self.rows))
        if all_logits:
            budget = min(budget, self.logit_rows)
        plan = []
        for n, s in enumerate(active):
            share = max(1, budget // (len(active) - n))
            toks = self._pending[s][:share]
            del self._pending[s][:share]
            budget -= len(toks)
            plan.append((s, toks, not self._pending[s]))
        return plan

    def write_step(self, plan: list[tuple[int, list[int], bool]], all_logits: bool = False,
                   outs: bool = True) -> tuple[tuple, list, int]:
        """Write the metadata of one step: plan = [(slot, tokens, last)] segments. Output rows: every token
        with all_logits, else the last token of segments marked last (none when outs is False).
        Returns (shape key, [(slot, first output, outputs, last)], output count)."""
        meta = np.zeros(self.out0 + self.rows, np.uint32)
        T, rows_out, segs = 0, [], []
        for i, (s, toks, last) in enumerate(plan):
            n = len(toks)
            meta[8 + 4 * i: 11 + 4 * i] = (T, n, s)
            meta[self.tok0 + T: self.tok0 + T + n] = toks
            rows = [] if not outs else list(range(T, T + n)) if all_logits else ([T + n - 1] if last else [])
            segs.append((s, len(rows_out), len(rows), last))
            rows_out += rows
            T += n
        nout = len(rows_out)
        meta[:5] = (T, len(plan), nout, self.tok0, self.out0)
        meta[self.out0: self.out0 + nout] = rows_out
        self.dev.write(self.meta, 0, meta[: self.out0 + nout] if nout else meta[: self.out0])
        return (T, len(plan), nout, max(len(t) for _, t, _ in plan)), segs, nout

    def _submit(self, all_logits: bool, outputs: bool = True) -> tuple | None:
        plan = self._schedule(all_logits)
        if not plan:
            return None
        key, segs, nout = self.write_step(plan, all_logits, outputs)
        if not outputs:
            for s, _, _, last in segs:
                if last:
                    self._done[s] = []
        encode = self.dev.encode
        for part in self.parts(key):
            encode(part)  # several submits, so the GPU starts while later layers are encoded
        return segs, nout

    def parts(self, key: tuple) -> list[list]:
        """The cached ops of one step shape (rows, segments, outputs, longest segment), in submit-sized parts;
        the op lists are the same objects every time (backends cache their encoded form by identity)."""
        parts = self._ops.get(key)
        if parts is None:
            if len(self._ops) > 256:
                self._ops.clear()
            gens = self.gens if key[2] else self.gens[:-2]  # nothing to read: skip the output LN and head
            ops = [op for g in gens for op in g(key)]
            n = max(1, self.k.tuning.submit_ops)
            parts = self._ops[key] = [ops[i: i + n] for i in range(0, len(ops), n)]
        return parts

    def _finish(self, segs: list, nout: int, raw: bytes | None, all_logits: bool) -> dict[int, np.ndarray]:
        V = self.info.vocab
        logits = np.frombuffer(raw, np.float32).reshape(nout, V) if nout else None
        out = {}
        for s, o0, n, last in segs:
            if n:
                self._done[s].append(logits[o0: o0 + n])
            if last:
                got = self._done[s]
                out[s] = (np.concatenate(got) if all_logits else got[-1][-1]).copy()
                self._done[s] = []
        return out

    def run(self, all_logits: bool = False, outputs: bool = True) -> dict[int, np.ndarray]:
        """Spend up to token_chunk_size queued tokens; logits of the slots whose input ran out. With
        outputs=False no logits are made or read (prefill whose last token runs later)."""
        sub = self._submit(all_logits, outputs)
        if sub is None or not outputs:
            return {}
        segs, nout = sub
        raw = self.dev.read(self.logits, 0, 4 * nout * self.info.vocab) if nout else None
        return self._finish(segs, nout, raw, all_logits)

    async def run_async(self, all_logits: bool = False, outputs: bool = True) -> dict[int, np.ndarray]:
        sub = self._submit(all_logits, outputs)
        if sub is None or not outputs:
            return {}
        segs, nout = sub
        raw = await self.dev.read_async(self.logits, 0, 4 * nout * self.info.vocab) if nout else None
        return self._finish(segs, nout, raw, all_logits)
