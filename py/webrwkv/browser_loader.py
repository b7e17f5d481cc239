"""Streamed model load for the browser: raw tensor bytes go from JS fetches straight into GPU
buffers; the GPU then converts them (dtype, transpose, padding) into the runtime's packed layout.
The index comes from a safetensors header or a .pth's zip tail and pickle (index_needs says what to fetch).

Python sees only the header and the small per-channel vectors (read back from the GPU); every
matrix is a deferred view (`GpuMatrix`, see layers.deferred) that the version recipes stack, pad
and slice as they would a numpy array, and the runtime's upload hook turns into GPU conversions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as kmod
from . import runtime as rtmod
from .browser_index import PrefixSource
from .checkpoints import read_model_header
from .errors import ModelFormatError
from .formats import FP16, WeightFormat, padded, weight_format
from .gpu import UNIFORM
from .models import TensorRef, initial_state, tuned_state_names
from .models.loader import index_header, to_canonical
from .tokenizer import Tokenizer, default_tokenizer

SRC_CODE = {"F32": 0, "F16": 1, "BF16": 2}
ESIZE = {"F32": 4, "F16": 2, "BF16": 2}


class Raw:
    """One tensor's bytes on the GPU: `buf` holds file bytes [a0, a1), the tensor starts `shift` elements in."""

    def __init__(self, ref: TensorRef, buf: Any, a0: int) -> None:
        self.ref, self.buf = ref, buf
        self.shift = (ref.offset - a0) // ESIZE[ref.dtype]
        shape = tuple(ref.canonical_shape)
        self.k = shape[-1]
        self.r = shape[-2] if len(shape) >= 2 else 1
        self.rows = int(np.prod(shape[:-1])) if len(shape) >= 2 else 1


class GpuMatrix:
    """A matrix assembled from rows of streamed tensors: segments (raw, flat src row, rows, dst row).
    Deferred (layers.deferred): its values are written by StreamingLoad.upload_matrix's plan."""

    def __init__(self, shape: tuple, segs: list) -> None:
        self.shape, self.segs = tuple(shape), segs

    @classmethod
    def of(cls, raw: Raw) -> "GpuMatrix":
        return cls(tuple(raw.ref.canonical_shape), [(raw, 0, raw.rows, 0)])

    def reshape(self, *shape: Any) -> "GpuMatrix":
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple) else tuple(shape)
        if shape[-1] != self.shape[-1] or int(np.prod(shape)) != int(np.prod(self.shape)):
            raise ModelFormatError(f"cannot view a {self.shape} matrix as {shape} on the GPU")
        return GpuMatrix(shape, self.segs)

    def __getitem__(self, j: int) -> "GpuMatrix":
        if len(self.shape) != 3 or not isinstance(j, (int, np.integer)):
            raise ModelFormatError("GPU matrices support only [batch] indexing")
        per = self.shape[1]
        return GpuMatrix(self.shape[1:], _rows(self.segs, int(j) * per, per))

    def pad_end(self, rows: int, cols: int) -> "GpuMatrix":
        """Zero rows/columns at the end: the packed buffers start zeroed and those rows get no data."""
        if rows < self.shape[0] or cols < self.shape[1] or len(self.shape) != 2:
            raise ModelFormatError(f"cannot pad a {self.shape} matrix to {(rows, cols)} on the GPU")
        return GpuMatrix((rows, cols), self.segs)

    @staticmethod
    def concat(mats: list) -> "GpuMatrix":
        """The matrices one under the other (the widest sets the width)."""
        segs, row = [], 0
        for m in mats:
            segs += [(raw, s0, n, d0 + row) for raw, s0, n, d0 in m.segs]
            row += m.shape[0]
        return GpuMatrix((row, max(m.shape[1] for m in mats)), segs)


class QuantJob:
    """One quantized layer matrix of a streamed load: its fp16 row blocks are made when their first
    rows arrive, quantized on the GPU into `dst` (the runtime's buffers) once every row has arrived,
    then freed, so only the matrices in flight exist in fp16."""

    def __init__(self, dev: Any, fmt: WeightFormat, split: list, kp: int, dst: list, label: str) -> None:
        self.dev, self.fmt, self.split, self.kp, self.dst, self.label = dev, fmt, split, kp, dst, label
        self.src: list = [None] * len(split)
        self.left = 0  # rows still to arrive
        self.done = False

    def block(self, i: int) -> Any:
        """The fp16 buffer of row block i (made zeroed on first use)."""
        if self.src[i] is None:
            r0, n = self.split[i]
            self.src[i] = self.dev.buffer(n * self.kp * 2, label=f"{self.label}.fp16[{r0}]")
        return self.src[i]

    def arrived(self, rows: int) -> None:
        self.left -= rows
        if self.left == 0:
            self.run()

    def run(self) -> None:
        """Quantize (rows that got no data, e.g. padding, are zeros) and free the fp16 blocks."""
        blocks = [(self.block(i), r0, n) for i, (r0, n) in enumerate(self.split)]
        self.fmt.quantize(self.dev, blocks, self.dst, self.kp)
        for buf, _, _ in blocks:
            self.dev.destroy(buf)
        self.src, self.done = [None] * len(self.split), True


def _rows(segs: list, start: int, n: int) -> list:
    """Rows [start, start + n) of a segment list, renumbered from 0."""
    out = []
    for raw, s0, cnt, d0 in segs:
        lo, hi = max(d0, start), min(d0 + cnt, start + n)
        if hi > lo:
            out.append((raw, s0 + lo - d0, hi - lo, lo - start))
    return out


class StreamingLoad:
    """One model load. The runtime is built first, over symbolic matrices, so every file range has a
    known destination: fp16 rows are written straight into the runtime's packed buffers; other
    tensors land in a staging buffer (made by JS on demand) and are converted as soon as complete."""

    def __init__(self, dev: Any, prefix: bytes, size: int, url: str, vocab_text: str | None,
                 max_batch: int = 1, token_chunk_size: int = 128, tuning: dict | None = None,
                 quant: str = "none", tokenizer: bool = True) -> None:
        if quant not in ("none", "int8", "nf4"):
            raise ModelFormatError(f"unknown quantization {quant!r}; use none, int8 or nf4")
        weight_format(quant)
        self.dev, self.url, self.quant = dev, url, quant
        self.jobs: list[QuantJob] = []
        self.kernels: Any = None  # the kernels' compilation, an awaitable (browser_entry starts it)
        self.name = url.split("?")[0].rstrip("/").split("/")[-1] or url
        src = PrefixSource(prefix, size, self.name)
        header = read_model_header(src, verify=False)  # a .pth's local zip headers are checked in finish()
        self.size, self.data_start = src.size, header.data_start
        self.info, self.refs = index_header(header, self.name)
        for r in self.refs.values():
            if r.offset % ESIZE[r.dtype]:
                raise ModelFormatError(f"{self.name}: tensor '{r.name}' starts at byte {r.offset}, not on a "
                                       f"{ESIZE[r.dtype]}-byte boundary, which the streamed load needs: convert "
                                       "the file with `webrwkv convert` (it aligns every tensor)")
        self.tokenizer = (None if not tokenizer else Tokenizer.from_text(vocab_text, self.name + ".vocab.txt")
                          if vocab_text else default_tokenizer())
        self._pipes: dict = {}
        self._uniforms: list = []
        # tensor -> [(src row, rows, dst buffer or (QuantJob, row block), dst row, dst row length)]
        self.segments: dict[str, list] = {}
        tuned = tuned_state_names(self.info)  # a state-tuned checkpoint's state comes back with the vectors
        vec_names = [n for n, r in self.refs.items() if len(r.canonical_shape) == 1 or n in tuned]
        raws = {n: Raw(r, None, r.offset & ~3) for n, r in self.refs.items() if n not in vec_names}
        # vectors are zero until finish() reads them back and calls runtime.write_vectors
        weights: dict[str, Any] = {n: np.zeros(self.refs[n].canonical_shape, np.float32) for n in vec_names}
        weights.update({n: GpuMatrix.of(raw) for n, raw in raws.items()})
        self.runtime = rtmod.Runtime(dev, self.info, weights, max_batch, token_chunk_size,
                                     tuning=_tuning(tuning, dev.software), upload=self.upload_matrix, quant=quant)
        self.writes: list = []
        self.staged: dict[int, Raw] = {}
        self.vec_spans: dict[str, tuple[int, int, int]] = {}
        pos = 0
        for n in vec_names:  # all vectors share one buffer, read back once at the end
            r = self.refs[n]
            a0, a1 = r.offset & ~3, (r.offset + r.nbytes + 3) & ~3
            self.vec_spans[n] = (pos, a0, a1)
            pos += a1 - a0
        used = {r.name for r in self.refs.values()}
        self.checks: list[tuple] = []  # (place in vec_buf, a0, a1, file offset, expected bytes)
        for offset, expect, names in getattr(header, "checks", []):  # predicted .pth zip headers
            if used.intersection(names):
                a0, a1 = offset & ~3, (offset + len(expect) + 3) & ~3
                self.checks.append((pos, a0, a1, offset, expect))
                pos += a1 - a0
        self.vec_bytes = pos
        self.vec_buf = dev.buffer(max(pos, 4), label="vectors (raw)")
        for n in vec_names:
            pos, a0, a1 = self.vec_spans[n]
            self.writes.append([a0, a1, self.vec_buf, pos, len(self.writes)])
        for pos, a0, a1, _, _ in self.checks:
            self.writes.append([a0, a1, self.vec_buf, pos, len(self.writes)])
        for n, raw in raws.items():
            segs, r = self.segments.get(_key(raw), []), raw.ref
            if not segs:
                continue  # not used by this runtime
            direct = all(kp == raw.k and not isinstance(dst, tuple) for _, _, dst, _, kp in segs)
            if r.dtype == "F16" and r.transform != "transpose" and raw.shift == 0 and direct:
                for s0, cnt, buf, d0, kp in segs:  # already packed fp16 rows: straight to their place
                    a0 = r.offset + s0 * raw.k * 2
                    self.writes.append([a0, a0 + cnt * kp * 2, buf, d0 * kp * 2, len(self.writes)])
            else:
                a0, a1 = r.offset & ~3, (r.offset + r.nbytes + 3) & ~3
                self.staged[len(self.writes)] = raw
                self.writes.append([a0, a1, None, 0, len(self.writes)])

    def write_done(self, tag: int, buf: Any = None) -> None:
        """All bytes of write `tag` are queued; a staged tensor is converted now and its buffer freed."""
        raw = self.staged.pop(tag, None)
        if raw is None:
            return
        if buf is None:
            raise ModelFormatError(f"no staging buffer came with tensor '{raw.ref.name}'; load the model again")
        raw.buf = buf
        arrived = []
        for s0, n, dst, d0, kp in self.segments[_key(raw)]:
            if isinstance(dst, tuple):  # rows of a matrix quantized once complete
                arrived.append((dst[0], n))
                dst = dst[0].block(dst[1])
            self._convert(raw, s0, n, dst, d0, kp)
        for job, n in arrived:
            job.arrived(n)
        self.dev.destroy(buf)

    def cancel(self) -> None:
        """Stop using this load (its buffers are freed with the device's others)."""
        self.staged.clear()

    async def _vectors(self) -> dict[str, np.ndarray]:
        raw = await self.dev.read_async(self.vec_buf, 0, max(self.vec_bytes, 4))
        for pos, a0, _, offset, expect in self.checks:
            got = bytes(raw[pos + offset - a0: pos + offset - a0 + len(expect)])
            if got != expect:
                raise ModelFormatError(
                    f"{self.name}: the zip header at byte {offset} is not where the checkpoint's directory puts "
                    "it, so its tensors were not where expected (a .pth not written by torch.save?): convert it "
                    "with `webrwkv convert` and load the .st")
        out = {}
        for n, (p, a0, _) in self.vec_spans.items():
            r = self.refs[n]
            start = p + r.offset - a0
            out[n] = to_canonical(r, raw[start: start + r.nbytes]).astype(np.float32, copy=False)
        return out

    def _pipe(self, dtype: str, transpose: bool) -> Any:
        key = (dtype, transpose)
        if key not in self._pipes:
            self._pipes[key] = kmod.Kernels(self.dev).get("convert", SRC=SRC_CODE[dtype], TRANSPOSE=int(transpose))
        return self._pipes[key]

    def _convert(self, raw: Raw, s0: int, n: int, dst: Any, d0: int, kp: int) -> None:
        ref = raw.ref
        transpose = ref.transform == "transpose"
        if ref.dtype == "F16" and not transpose and kp == raw.k and raw.shift == 0:
            self.dev.copy(raw.buf, s0 * raw.k * 2, dst, d0 * kp * 2, n * kp * 2)  # already packed fp16
            return
        words = n * kp // 2
        params = np.array([raw.shift, raw.r, raw.k, s0, n, d0, kp, words], np.uint32)
        ubuf = self.dev.buffer(params.nbytes, UNIFORM, "convert params")
        self.dev.write(ubuf, 0, params)
        pipe = self._pipe(ref.dtype, transpose)
        group = self.dev.bind(pipe, [raw.buf, dst, ubuf])
        wgs = -(-words // 256)
        x = min(wgs, 65535)
        self.dev.encode([(pipe, group, (x, -(-wgs // x), 1))])
        self._uniforms.append(ubuf)

    def upload_matrix(self, dev: Any, w: Any, label: str, fmt: WeightFormat) -> tuple[list[tuple], int]:
        """The runtime's upload hook: a numpy matrix goes up as fmt.upload does; a GpuMatrix gets the same
        row blocks, their rows filled by the plan later. A quantized format gets its buffers now, and the
        fp16 rows go to a QuantJob that quantizes them once all have arrived."""
        if not isinstance(w, GpuMatrix):
            return fmt.upload(dev, w, label)
        N, K = w.shape
        Kp = padded(K)
        split = FP16.split(dev, N, Kp)
        if fmt.quantized:
            dst = fmt.alloc(dev, N, Kp, label)
            job = QuantJob(dev, fmt, split, Kp, dst, label)
            self.jobs.append(job)
            for i, (r0, nr) in enumerate(split):
                for raw, s0, n, d0 in _rows(w.segs, r0, nr):
                    self.segments.setdefault(_key(raw), []).append((s0, n, (job, i), d0, Kp))
                    job.left += n
            return dst, Kp
        blocks = []
        for r0, nr in split:
            buf = dev.buffer(nr * Kp * 2, label=f"{label}[{r0}]")
            for raw, s0, n, d0 in _rows(w.segs, r0, nr):
                self.segments.setdefault(_key(raw), []).append((s0, n, buf, d0, Kp))
            blocks.append((buf, r0, nr))
        return blocks, Kp

    async def finish(self) -> tuple[Any, Any, Any]:
        """Fill the per-channel vectors, wait for the conversions, and hand over the runtime."""
        if self.staged:
            missing = ", ".join(sorted(r.ref.name for r in self.staged.values())[:3])
            raise ModelFormatError(f"the download ended before tensors {missing} arrived; load the model again")
        for job in self.jobs:  # matrices that got no bytes at all (all padding)
            if not job.done and job.left == 0:
                job.run()
        small = await self._vectors()
        self.runtime.write_vectors(small)
        self.runtime.set_initial_state(initial_state(self.info, small), own=True)  # loadState(null) comes back here
        await self.dev.sync_async()
        for b in self._uniforms + [self.vec_buf]:
            self.dev.destroy(b)
        self._uniforms = []
        self.dev.raise_errors("loading the model")
        return self.runtime, self.tokenizer, self.info


def record_kernels(dev: Any, prefix: bytes, size: int, url: str, tuning: dict | None, quant: str,
                   chunk: int = 128, all_layers: bool = False) -> dict:
    """The kernels a load of this model will use (prefill chunks, decode steps with GPU sampling), built on a
    RecordingDevice: {kernel key: Recorded}, to compile ahead with Kernels.compile_ahead. Only the first two
    blocks and the last are run (unless all_layers): the others make the same kernels as the second, and
    running each of 24-32 took most of this dry run's time in the page's Python."""
    from .gpu.device import RecordingDevice

    dry = RecordingDevice(dev)
    ld = StreamingLoad(dry, prefix, size, url, None, token_chunk_size=chunk, tuning=tuning, quant=quant,
                       tokenizer=False)
    rt = ld.runtime
    spans = rt.layer_spans
    if not all_layers and len(spans) > 3:
        rt.gens = rt.gens[:spans[2][0]] + rt.gens[spans[-1][0]:]
    for t in {2, rt.k.tuning.gemv_max_t + 1, chunk}:  # GEMV for a few tokens, GEMM (two tilings) for more
        rt.parts((t, 1, 1, t))
        rt.parts((t, 1, 0, t))
    rt.decoder.submit({0: 0}, 1)  # the decode step and its sampler
    return dict(dry.pipeline_cache)


def _tuning(overrides: dict | None, software: bool = False) -> Any:
    """Kernel tuning for the browser: a whole step in one submit (ONE call into JS), one GEMV row a thread
    (the page has one slot: several tokens reach the GEMV only in short prompts, where rows per thread do not
    pay for their kernels' longer compile), 64 threads a GEMV row on a GPU (Chromium on an H200, v7 fp16
    decode: L32 +6 %, L24 +3.5 %, L12 +2 % against 32, where native gains 1.6 % at L32 and loses 1 % at L24;
    a software adapter keeps 32, the shape measured there), four decode windows in flight (Chromium on an H200:
    v7 L12 greedy / sampled 1,250 / 1,075 tok/s with 2, 1,285 / 1,107 with 3, 1,386 / 1,205 with 4, where native
    gains nothing past 2; a stream's end waits for what is queued, so generation.AHEAD_S bounds it), plus
    overrides."""
    t = kmod.Tuning()
    t.submit_ops = 1 << 30
    t.windows_in_flight = 4
    t.gemv_mt_rows = 1
    if not software:
        t.gemv_tpr = 64
    for k, v in (overrides or {}).items():
        if not hasattr(t, k):
            raise ModelFormatError(f"unknown kernel tuning knob {k!r}; known: {', '.join(vars(t))}")
        setattr(t, k, int(v))
    return t


def _key(raw: Raw) -> str:
    return raw.ref.name

