"""Weight formats: how a matrix is stored on the GPU (fp16, int8, NF4), as one `WeightFormat` value each.

A format owns its bytes per row, its row blocks (matrices above the binding limit are split), its upload
from numpy, its quantization on the GPU from fp16 rows (shaders/quant.wgsl) and the template values of
the gemv/gemm weight-format files it includes (shaders/gemv_<name>.wgsl, gemm_<name>.wgsl). A matmul
or a layer never asks which format it has.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import quant as q
from .errors import ModelFormatError, WebRwkvError
from .gpu import UNIFORM
from .kernels import Kernels

Blocks = list  # [(buffer, first row, rows)]
PAD_K = 8      # every format pads K to a multiple of 8 (one packed u32 / vec4 step of the kernels)
QUANT_WG = 64
PARAM_STRIDE = 256  # uniform binding offsets must be multiples of 256 bytes


def padded(k: int) -> int:
    return -(-k // PAD_K) * PAD_K


def row_split(dev: Any, rows: int, row_bytes: int) -> list[tuple[int, int]]:
    """[(first row, rows)] blocks of at most the binding limit (multiples of 64 rows when split)."""
    limit = min(dev.limits["max_storage_binding"], dev.limits["max_buffer_size"])
    per = max(1, limit // row_bytes)
    if per < rows and per >= 64:
        per -= per % 64
    return [(r0, min(per, rows - r0)) for r0 in range(0, rows, per)]


def upload_fp16_rows(dev: Any, data: Any, N: int, K: int, label: str) -> Blocks:
    """`data` holds N rows of K little-endian fp16 values (K % 8 == 0): raw fp16 bytes from a file go
    straight through. Returns the row blocks within the binding limit."""
    mv = memoryview(data).cast("B")
    blocks = []
    for r0, n in row_split(dev, N, K * 2):
        buf = dev.buffer(n * K * 2, label=f"{label}[{r0}]")
        dev.write(buf, 0, mv[r0 * K * 2: (r0 + n) * K * 2])
        blocks.append((buf, r0, n))
    return blocks


def fp16_rows(w: Any, label: str = "") -> tuple[np.ndarray, int]:
    """An [N, K] matrix (any float dtype) as contiguous fp16 rows, K zero-padded to PAD_K. A wider
    matrix holding values beyond fp16's range (or infinities) is refused, naming `label`."""
    N, K = w.shape
    Kp = padded(K)
    if Kp == K and w.dtype == np.float16:
        return np.ascontiguousarray(w), Kp
    h = np.zeros((N, Kp), np.float16)
    with np.errstate(over="ignore"):
        h[:, :K] = w
    if np.isinf(h).any():
        raise ModelFormatError(f"tensor '{label}' has values beyond the fp16 range (|x| > 65504), which the GPU "
                               "keeps its weights in; run it with --backend reference")
    return h, Kp


class WeightFormat:
    """fp16: two halves per u32. The base class is the fp16 format; quantized formats override."""

    name = "fp16"
    quantized = False

    def row_bytes(self, k: int) -> int:
        """GPU bytes of one row of k (padded) weights."""
        return 2 * k

    def nbytes(self, rows: int, k: int) -> int:
        return rows * self.row_bytes(k)

    def split(self, dev: Any, rows: int, k: int) -> list[tuple[int, int]]:
        return row_split(dev, rows, self.row_bytes(k))

    def alloc(self, dev: Any, rows: int, k: int, label: str) -> Blocks:
        """Zeroed buffers of an [rows, k] matrix in this format, split as upload() splits it."""
        return [(dev.buffer(n * self.row_bytes(k), label=f"{label}[{r0}]"), r0, n) for r0, n in self.split(dev, rows, k)]

    def upload(self, dev: Any, w: Any, label: str) -> tuple[Blocks, int]:
        """Put an [N, K] numpy matrix on the GPU in this format: (row blocks, padded K)."""
        h, Kp = fp16_rows(w, label)
        return upload_fp16_rows(dev, memoryview(h).cast("B"), h.shape[0], Kp, label), Kp

    def quantize(self, dev: Any, src: Blocks, dst: Blocks, k: int) -> None:
        """Fill `dst` (alloc's blocks) from packed fp16 row blocks already on the GPU."""
        raise WebRwkvError(f"{self.name} matrices are uploaded, not quantized")

    def kernel_values(self, kernel: str, rows: int, k: int) -> dict:
        """Template values of the weight-format file `kernel`_<name> for a block of `rows` rows."""
        return {"FORMAT": f"{kernel}_{self.name}"}


class QuantizedFormat(WeightFormat):
    """A format made on the GPU from fp16 rows by shaders/quant.wgsl (numpy's quantizers are the reference)."""

    quantized = True

    def cpu_rows(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row bytes as uint8 [N, ...], per-row scale bytes as uint8 [N, ...]) of an fp32 [N, K] matrix."""
        raise NotImplementedError

    def upload(self, dev: Any, w: Any, label: str) -> tuple[Blocks, int]:
        """fp16 rows up, quantized on the GPU, fp16 freed (peak: one fp16 matrix); numpy's quantizer
        instead when $WEBRWKV_QUANT_ON=cpu (the reference path)."""
        where = os.environ.get("WEBRWKV_QUANT_ON", "gpu")
        if where not in ("gpu", "cpu"):
            raise WebRwkvError(f"WEBRWKV_QUANT_ON must be gpu or cpu, not {where!r}")
        if where == "cpu":
            return self.upload_cpu(dev, w, label)
        src, k = FP16.upload(dev, w, label + ".fp16")
        dst = self.alloc(dev, w.shape[0], k, label)
        self.quantize(dev, src, dst, k)
        for buf, _, _ in src:
            dev.destroy(buf)
        return dst, k

    def upload_cpu(self, dev: Any, w: Any, label: str) -> tuple[Blocks, int]:
        """Quantize with numpy and upload: each block holds its rows' codes, then their scales."""
        w = np.asarray(w, np.float32)
        Kp = padded(w.shape[1])
        if Kp != w.shape[1]:
            w = np.pad(w, ((0, 0), (0, Kp - w.shape[1])))
        codes, scales = self.cpu_rows(w)
        blocks = []
        for r0, n in self.split(dev, w.shape[0], Kp):
            data = np.concatenate([codes[r0:r0 + n].reshape(-1), scales[r0:r0 + n].reshape(-1)])
            buf = dev.buffer(data.nbytes, label=f"{label}[{r0}]")
            dev.write(buf, 0, data)
            blocks.append((buf, r0, n))
        return blocks, Kp

    def blocks_per_row(self, k: int) -> int:
        """Threads of the quantization kernel per row."""
        return 1

    def quantize(self, dev: Any, src: Blocks, dst: Blocks, k: int) -> None:
        """Each overlap of a source and a destination block is one dispatch of quant.wgsl; the result
        equals upload_cpu's bytes for the same fp16 values."""
        if k % 8:
            raise WebRwkvError(f"quantized rows need a multiple of 8 weights, not {k}")
        jobs = []
        for dbuf, d0, dn in dst:
            for sbuf, s0, sn in src:
                lo, hi = max(d0, s0), min(d0 + dn, s0 + sn)
                if hi > lo:
                    jobs.append((sbuf, dbuf, lo - s0, lo - d0, hi - lo, dn))
        if not jobs:
            return
        pipe = Kernels(dev).get("quant", WG=QUANT_WG, FORMAT=self.name, NF4_MIDS=q.wgsl_floats(q.NF4_MIDS))
        maxdim = dev.limits.get("max_workgroups_per_dim", 65535)
        params = np.zeros((len(jobs), PARAM_STRIDE // 4), np.uint32)
        grids = []
        for i, (_, _, s, d, n, dn) in enumerate(jobs):
            wgs = -(-n * self.blocks_per_row(k) // QUANT_WG)
            gx = min(wgs, maxdim)
            params[i, :6] = (s, d, n, dn, k, gx)
            grids.append((gx, -(-wgs // gx), 1))
        pbuf = dev.buffer(params.nbytes, UNIFORM, "quant params")
        dev.write(pbuf, 0, params)
        ops = [(pipe, dev.bind(pipe, [sbuf, dbuf, (pbuf, i * PARAM_STRIDE, 32)]), grid)
               for i, ((sbuf, dbuf, *_), grid) in enumerate(zip(jobs, grids))]
        dev.encode(ops)
        dev.destroy(pbuf)  # freed once the submitted work is done


class Int8(QuantizedFormat):
    """One byte per weight (4 per u32), then one f32 absmax scale per row."""

    name = "int8"

    def row_bytes(self, k: int) -> int:
        return k + 4

    def cpu_rows(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes, scales = q.quantize_int8(w)
        return codes.view(np.uint8), scales.view(np.uint8).reshape(len(w), -1)

    def kernel_values(self, kernel: str, rows: int, k: int) -> dict:
        return {"FORMAT": f"{kernel}_int8", "SB": rows * k // 4}


class NF4(QuantizedFormat):
    """4-bit codes (8 per u32, low nibble first), then one f32 absmax scale per 64 weights of a row."""

    name = "nf4"

    def row_bytes(self, k: int) -> int:
        return k // 2 + 4 * -(-k // q.NF4_BLOCK)

    def blocks_per_row(self, k: int) -> int:
        return -(-k // q.NF4_BLOCK)

    def cpu_rows(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes, scales = q.quantize_nf4(w)
        return q.pack_nf4(codes).view(np.uint8), np.ascontiguousarray(scales).view(np.uint8)

    def kernel_values(self, kernel: str, rows: int, k: int) -> dict:
        return {"FORMAT": f"{kernel}_nf4", "SB": rows * k // 8, "NF4_LEVELS": q.wgsl_floats(q.NF4_LEVELS)}


FP16 = WeightFormat()
INT8 = Int8()
NF4_FORMAT = NF4()
FORMATS = {"none": FP16, "fp16": FP16, "int8": INT8, "nf4": NF4_FORMAT}


def weight_format(name: Any) -> WeightFormat:
    """The format named `name` ("none"/"fp16", "int8", "nf4"), or a WeightFormat passed as it is."""
    if isinstance(name, WeightFormat):
        return name
    if name not in FORMATS:
        raise WebRwkvError(f"unknown weight format {name!r}; use none (fp16), int8 or nf4")
    return FORMATS[name]
