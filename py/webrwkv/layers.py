"""The GPU layer toolkit the version files (webrwkv.models.vN) build their layers from; it knows no version.

A model becomes a list of op generators `f(shape) -> [ops]` with shape = (T, nseg, nout, longest); the
runtime evaluates them once per shape and caches the flat op list. `build()` assembles embedding, every
block (the version's `att` and `ffn` recipes) and the head.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .formats import FP16, WeightFormat
from .kernels import Kernels, MatMul, pow2_divisor

Gen = Callable[[tuple], list]
# upload(dev, matrix, label, fmt) -> (row blocks, padded K): puts one matrix on the GPU in format `fmt`
Upload = Callable[[Any, Any, str, WeightFormat], tuple]
LN_VECS = ["ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"]
HEAD_VECS = ["blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias"]


def default_upload(dev: Any, w: Any, label: str, fmt: WeightFormat) -> tuple[list, int]:
    return fmt.upload(dev, w, label)


def deferred(a: Any) -> bool:
    """A matrix whose values come later (the browser's streamed load): it has shape, reshape and
    [i] like an array, plus `pad_end(rows, cols)` and `concat(mats)`; its upload hook fills it."""
    return hasattr(a, "pad_end") and hasattr(a, "concat")


def mat(a: Any) -> Any:
    """A weight matrix kept in fp16 when it already is (no widening copy), else as float32;
    a deferred matrix passes through as it is."""
    if deferred(a):
        return a
    a = np.asarray(a)
    return a if a.dtype == np.float16 else a.astype(np.float32, copy=False)


def pad_end(a: Any, rows: int, cols: int) -> Any:
    """Matrix `a` zero-padded at the end to [rows, cols]."""
    if deferred(a):
        return a.pad_end(rows, cols)
    return np.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])))


def stack(mats: list) -> Any:
    """Matrices of equal width, one under the other."""
    if len(mats) == 1:
        return mats[0]
    return mats[0].concat(mats) if deferred(mats[0]) else np.concatenate(mats)


def pad8(n: int) -> int:
    return -(-n // 8) * 8


def pad64(n: int) -> int:
    return -(-n // 64) * 64


def pack_vecs(info: Any, w: dict, names: list[str]) -> tuple[np.ndarray, dict, int]:
    """All per-channel vectors as one f32 array: per-layer blocks of stride VS (LN_VECS + `names`, each as long
    as the layers' own, C unless e.g. [dim_ffn]), then the global ones. Returns (array, {name: offset in a
    layer block}, VS)."""
    C, names = info.n_embd, LN_VECS + list(names)
    sizes = {}
    for n in names:
        found = [np.size(w[f"blocks.{i}.{n}"]) for i in range(info.n_layer) if f"blocks.{i}.{n}" in w]
        sizes[n] = max(found, default=C)
    offs = dict(zip(names, np.cumsum([0] + [sizes[n] for n in names]).tolist()))
    vs = pad64(sum(sizes.values()))
    out = np.zeros(vs * info.n_layer + len(HEAD_VECS) * C, np.float32)
    for i in range(info.n_layer):
        for n in names:
            v = w.get(f"blocks.{i}.{n}")
            if v is not None:
                out[i * vs + offs[n]: i * vs + offs[n] + sizes[n]] = np.asarray(v, np.float32).reshape(-1)
    base = vs * info.n_layer
    for j, n in enumerate(HEAD_VECS):
        out[base + j * C: base + (j + 1) * C] = mat(w[n]).reshape(-1)
    return out, {n: int(offs[n]) for n in names}, vs


def state_geometry(layout: list[tuple[str, tuple]]) -> tuple[int, dict]:
    """Per-layer state stride (floats, 256-byte aligned) and {key: (offset, shape)} inside one layer, from
    the version's state layout: att_x and ffn_x first, then the rest in layout order."""
    layer0 = [(n.split(".", 2)[2], shape) for n, shape in layout if n.startswith("blocks.0.")]
    layer0.sort(key=lambda e: (e[0] != "att_x", e[0] != "ffn_x"))
    offs, pos = {}, 0
    for key, shape in layer0:
        offs[key] = (pos, tuple(shape))
        pos += int(np.prod(shape))
    return pad64(pos), offs


class LayerBuilder:
    """Uploads one model's weights and makes the per-layer op generators; `b` holds the activations.

    Every matrix goes through `mat()` / `pad_end()` / `stack()` and then `upload(dev, matrix, label, fmt)`,
    so a loader may pass deferred matrices with its own upload. `fmt` is the layers' weight format; the
    embedding and head are always fp16.
    """

    def __init__(self, k: Kernels, info: Any, w: dict, bufs: dict, vecs_buf: Any, vec_off: dict, vs: int,
                 state: Any, geometry: tuple[int, dict], slot_stride: int, n_slots: int,
                 upload: Upload = default_upload, fmt: WeightFormat = FP16) -> None:
        self.k, self.dev, self.info, self.w, self.b = k, k.dev, info, w, bufs
        self.upload, self.fmt = upload, fmt
        self.vecs, self.vo, self.vs = vecs_buf, vec_off, vs
        self.state, (self.ls, offs), self.slot, self.n_slots = state, geometry, slot_stride, n_slots
        self.so = {key: off for key, (off, _) in offs.items()}  # state offsets inside a layer
        self.C = info.n_embd
        self.wg = pow2_divisor(self.C)
        self.weight_bytes = 0
        self.split_matrices = 0  # matrices uploaded as several row blocks / groups (binding limit)

    mat = staticmethod(mat)
    pad_end = staticmethod(pad_end)
    stack = staticmethod(stack)

    # -- bindings ------------------------------------------------------------------------
    def vec_bind(self, i: int) -> tuple:
        """Layer i's block of per-channel vectors (offsets in self.vo)."""
        return (self.vecs, i * self.vs * 4, self.vs * 4)

    def state_bind(self, i: int) -> tuple:
        """Layer i's state in every slot (offsets in self.so, slot stride self.slot)."""
        return (self.state, i * self.ls * 4, ((self.n_slots - 1) * self.slot + self.ls) * 4)

    def lora_dim(self) -> int:
        """The widest LoRA hidden size, padded to 8 (hidden layers share one buffer stride)."""
        return pad8(max(self.info.dims.values()) if self.info.dims else 8)

    # -- matrices ------------------------------------------------------------------------
    def _upload(self, m: Any, label: str, fmt: WeightFormat | None = None) -> tuple[list, int]:
        fmt = fmt or self.fmt
        blocks, Kp = self.upload(self.dev, m, label, fmt)
        self.weight_bytes += fmt.nbytes(m.shape[0], Kp)
        self.split_matrices += len(blocks) > 1
        return blocks, Kp

    def table(self, m: Any, label: str) -> tuple[list, int]:
        """A matrix a kernel reads rows of itself (a per-token lookup table like the embedding): fp16 row
        blocks [(buffer, first row, rows)] within the binding limit, and the padded row length."""
        return self._upload(mat(m), label, FP16)

    def _fits(self, rows: int, k: int) -> bool:
        limit = min(self.dev.limits["max_storage_binding"], self.dev.limits["max_buffer_size"])
        return self.fmt.nbytes(rows, pad8(k)) <= limit

    def matmul(self, mats: list, x: Any, y: Any, label: str, pad_rows: int = 0, **kw: Any) -> list[Gen]:
        """One grouped matmul over `mats` (equal shapes), or one per group when too big to bind."""
        mats = [mat(m) for m in mats]
        if pad_rows:
            mats = [pad_end(m, pad_rows, m.shape[1]) for m in mats]
        NR = mats[0].shape[0]
        cat = stack(mats)
        if len(mats) == 1 or self._fits(cat.shape[0], cat.shape[1]):
            blocks, Kp = self._upload(cat, label)
            if len(mats) > 1:
                blocks = [(blocks[0][0], 0, NR)]
            mm = [MatMul(self.k, self.b["meta"], blocks, Kp, len(mats), NR, x, y, fmt=self.fmt, **kw)]
        else:
            acts = kw.pop("acts", ("none",))
            x_off, x_gs = kw.pop("x_off", 0), kw.pop("x_gs", 0)
            mm = []
            self.split_matrices += 1
            for g, m in enumerate(mats):
                blocks, Kp = self._upload(m, f"{label}.{g}")
                blocks = [(b, r0 + g * NR, n) for b, r0, n in blocks]
                mm.append(MatMul(self.k, self.b["meta"], blocks, Kp, 1, NR, x, y, x_off=x_off + g * x_gs,
                                 acts=(acts[g % len(acts)],), fmt=self.fmt, **kw))
        return [lambda s, m=m: m.ops(s[0]) for m in mm]

    def fused(self, parts: list, x: Any, y: Any, label: str, x_off: int = 0, **kw: Any) -> list[Gen]:
        """Several matrices with the same input width in ONE dispatch (ragged groups).

        parts: [(matrix [rows, K], X offset of its input, activation)]; outputs are side by side
        from column 0. Falls back to one matmul per part when the stack exceeds the binding limit.
        """
        mats = [mat(m) for m, _, _ in parts]
        cols = np.cumsum([0] + [m.shape[0] for m in mats])
        cat = stack(mats)
        if not self._fits(cat.shape[0], cat.shape[1]):
            self.split_matrices += 1
            gens = []
            for (m, xo, act), c0 in zip(parts, cols):
                blocks, Kp = self._upload(m, label)
                blocks = [(b, r0 + int(c0), n) for b, r0, n in blocks]
                mm = MatMul(self.k, self.b["meta"], blocks, Kp, 1, m.shape[0], x, y, x_off=x_off + xo,
                            acts=(act,), fmt=self.fmt, **kw)
                gens.append(lambda s, mm=mm: mm.ops(s[0]))
            return gens
        blocks, Kp = self._upload(cat, label)
        ragged = [(m.shape[0], xo, int(c0)) for m, (_, xo, _), c0 in zip(mats, parts, cols)]
        mm = MatMul(self.k, self.b["meta"], blocks, Kp, len(parts), 0, x, y, x_off=x_off,
                    acts=[a for _, _, a in parts], ragged=ragged, fmt=self.fmt, **kw)
        return [lambda s: mm.ops(s[0])]

    # -- other kernels ---------------------------------------------------------------------
    def op(self, name: str, entries: list, dims: Callable[[tuple], tuple], **params: Any) -> Gen:
        """One dispatch of kernel `name` (shaders/<name>.wgsl) with these bindings and template values;
        dims(shape) gives its workgroup counts."""
        made: list = []  # compiled at the first step that needs it (kernels may be compiled ahead, in parallel)

        def gen(s: tuple) -> list:
            if not made:
                pipe = self.k.get(name, **params)
                made.append((pipe, self.dev.bind(pipe, entries)))
            return [(*made[0], dims(s))]
        return gen

    def ln_mix(self, i: int, out: Any, nmix: int, nout: int, ln: str, mu: str, lerp_prev: bool,
               xoff: int, extra: int = 0) -> Gen:
        """LayerNorm `ln` of the residual stream and `nmix` token-shift mixes with the vectors starting at
        `mu` (shaders/mix.wgsl) into `out` [T, nout, C]; the layer's shift state is at state offset xoff."""
        rpw, wg = self.k.tuning.mix_rows, min(self.k.tuning.mix_wg, self.wg)
        cb = self.C // wg
        return self.op("mix", [self.b["meta"], self.b["x"], self.vec_bind(i), self.state_bind(i), out],
                       lambda s: ((-(-s[3] // rpw) if s[3] else 1) * cb, s[1], 1),
                       C=self.C, WG=wg, NOUT=nout, RPW=rpw, SLOT=self.slot, XOFF=xoff, LNW=self.vo[ln + ".weight"],
                       LNB=self.vo[ln + ".bias"], NMIX=nmix, MU=self.vo[mu], LERP_PREV=int(lerp_prev), EXTRA=extra)


def base_activations(info: Any, rows: int) -> dict[str, int]:
    """Float counts of the activations every version has: residual x, attention output y, FFN hidden
    (with room for a receptance) and the final LN rows xo."""
    C = info.n_embd
    return {"x": rows * C, "y": rows * C, "hid": rows * (info.dim_ffn + C), "xo": rows * C}


def build(lb: LayerBuilder, version: Any, info: Any, logits: Any) -> tuple[list[Gen], list[tuple[int, int]]]:
    """Every op generator of one step: embedding + LN0, each block's `version.att` and `version.ffn`,
    the output LN of the rows to read and the head into `logits`; and where each block's generators are
    in that list, (start, end)."""
    C, V, b, w = info.n_embd, info.vocab, lb.b, lb.w
    gens: list[Gen] = []
    emb, _ = lb._upload(w["emb.weight"], "emb", FP16)
    head_base = 4 * lb.vs * info.n_layer
    gv = (lb.vecs, head_base, 4 * len(HEAD_VECS) * C)
    for buf, r0, nr in emb:
        gens.append(lb.op("embed", [b["meta"], buf, gv, b["x"]], lambda s: (s[0], 1, 1), C=C, WG=lb.wg,
                          V0=r0, NV=nr, LNW=0, LNB=C))
    spans = []
    for i in range(info.n_layer):
        start = len(gens)
        gens += version.att(lb, i) + version.ffn(lb, i)
        spans.append((start, len(gens)))
    gens.append(lb.op("norm", [b["meta"], b["x"], gv, b["xo"]], lambda s: (s[2], 1, 1), C=C, WG=lb.wg,
                      LNW=2 * C, LNB=3 * C))
    blocks, _ = lb._upload(w["head.weight"], "head", FP16)
    head = MatMul(lb.k, b["meta"], blocks, C, 1, V, b["xo"], logits, x_ts=C, y_ts=V, tsrc=2, fmt=FP16)
    gens.append(lambda s: head.ops(s[2]))
    return gens, spans
