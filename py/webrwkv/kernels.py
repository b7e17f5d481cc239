"""Loads shaders/*.wgsl through the preprocessor (webrwkv.wgsl), caches pipelines, and builds matmul ops.

Template values are compile-time constants (sizes, offsets, tile shapes, variant names), so every tuning
knob (workgroup sizes, tiles, rows per workgroup) is a plain Python value in `Tuning`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import wgsl
from .errors import GpuError

_HERE = Path(__file__).resolve().parent
SHADER_DIRS = (_HERE / "shaders", _HERE.parents[1] / "shaders")

MAX_MT = 8  # tokens one GEMV workgroup serves at most (accumulators per thread)
# activation codes of shaders/matmul.wgsl's act_code
ACTS = {"none": 0, "relu2": 1, "sigmoid": 2, "tanh": 3}


@dataclass
class Tuning:
    """Kernel shape knobs; change them here, per runtime, or with $WEBRWKV_TUNING to tune for a GPU.
    Defaults were the best measured on H100/H200 (Vulkan) with v6/v7 L24 C2048."""

    gemv_rows: int = 8          # output rows per GEMV workgroup
    gemv_tpr: int = 32          # threads per output row (power of two)
    gemv_subgroups: int = 1     # reduce with subgroup shuffles when the device has them
    gemv_unroll: int = 2        # weight loads in flight per GEMV thread (an H200 at L24: 2 is 10 % faster than 4)
    gemv_mt_unroll: int = 1     # the same when a GEMV serves several tokens (an H200 at L24, 8 slots: 1 decodes
                                # 12 % faster than 2; one token is 8 % slower with 1)
    gemv_max_t: int = 8         # use GEMV when a matmul has at most this many tokens (each weight load serves all)
    gemv_mt_rows: int = 4       # rows per GEMV thread when it serves several tokens (each activation load serves
                                # all) of a long matrix that still makes gemv_mt_wg workgroups; 1: one row a thread
    gemv_mt_wg: int = 256
    gemv_mt_tpr: int = 128      # at most this many threads a row for several tokens (see gemv_shape)
    gemv_mt_loads: int = 1      # while each thread still makes this many weight loads a row (an H200 at L24, 8
                                # slots: 1 gives the attention output 4 rows a thread where 4 gave it one, and
                                # B=8 2,736 -> 2,905 tok/s)
    gemv_mt: int = MAX_MT       # tokens a GEMV workgroup serves when a matmul has several (at most MAX_MT)
    gemv_mt_tfirst: int = 0     # 1: a row block's token groups are neighbours in the grid (share reads in L2;
                                # an H200 at L24, 8 slots, gemv_mt=4: 2,584 tok/s against 2,901 with one group)
    gemm_tm: int = 64           # tokens per GEMM tile
    gemm_tn: int = 128          # output rows per GEMM tile
    gemm_tk: int = 16           # K step of the GEMM tile
    gemm_mm: int = 4            # tokens per thread in the GEMM tile (multiple of 4)
    gemm_nn: int = 8            # output rows per thread in the GEMM tile (multiple of 4)
    mix_rows: int = 16          # rows per ln_mix workgroup
    mix_wg: int = 256           # channels per ln_mix workgroup (a power of two dividing C)
    submit_ops: int = 48        # dispatches per submit of a prefill step (split so the GPU starts early; a decode
                                # window's steps go whole, see GpuDecoder.step_ops)
    windows_in_flight: int = 2  # decode windows queued at once (each has a copy of all slots' state, for rollbacks;
                                # their steps share the ring of CAP ids); natively no gain past 2 on an H200, the
                                # browser takes 4 (browser_loader._tuning)
    window_steps: int = 1       # decode steps of a window in one compute pass and submit; 1: each part of a step
                                # alone, so the GPU starts on a window while the rest is recorded (Chromium on
                                # an H200: 1 decodes 9-12 % faster than 8 at L12 and L24; native alike)
    gemm_min_wg: int = 660      # split K when a GEMM grid has fewer workgroups than this, into about this many
    gemm_max_split: int = 8     # at most this many K slices
    gemm_min_k: int = 256       # and each slice at least this much of K (an H200, v7 L24 at 128 tokens: 660 / 256
                                # run 9.6 % faster than 264 / 512, L32 13-20 %; 620 or 700 lose 2-6 % of it)


def tuning_from_env(base: Tuning | None = None) -> Tuning:
    """Tuning with overrides from $WEBRWKV_TUNING, e.g. "gemm_tm=64,gemm_mm=8"."""
    import os

    t = base or Tuning()
    for item in filter(None, os.environ.get("WEBRWKV_TUNING", "").split(",")):
        key, _, val = item.partition("=")
        if not hasattr(t, key.strip()):
            raise GpuError(f"WEBRWKV_TUNING: unknown knob {key!r}; known: {', '.join(vars(t))}")
        setattr(t, key.strip(), int(val))
    return t


def shader_source(name: str) -> str:
    for d in SHADER_DIRS:
        p = d / f"{name}.wgsl"
        if p.is_file():
            return p.read_text()
    raise GpuError(f"kernel source {name}.wgsl not found (looked in {', '.join(map(str, SHADER_DIRS))}); "
                   "reinstall webrwkv")


def pow2_divisor(n: int, cap: int = 256) -> int:
    """Largest power of two <= cap dividing n."""
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


class Kernels:
    """Pipeline factory and cache for one device."""

    def __init__(self, device: Any, tuning: Tuning | None = None) -> None:
        self.dev = device
        self.tuning = tuning or tuning_from_env()
        self._pipes: dict[tuple, Any] = device.pipeline_cache  # shared by every runtime on the device
        self.subgroups = "subgroups" in device.features
        self.max_rows = 128  # most tokens per step (the runtime sets it); sizes split-K scratch
        self._scratch: Any = None

    def source(self, name: str, params: dict) -> str:
        """The WGSL of kernel `name` for these template values."""
        return wgsl.render(shader_source(name), params, name, shader_source)

    def get(self, name: str, **params: Any) -> Any:
        key = (name, tuple(sorted((k, _hashable(v)) for k, v in params.items())))
        pipe = self._pipes.get(key)
        if pipe is None:
            pipe = self._pipes[key] = self.dev.pipeline(self.source(name, params), "main")
        return pipe

    @staticmethod
    def compile_ahead(dev: Any, recorded: dict, progress: Any = None) -> Any:
        """Start compiling the kernels a RecordingDevice recorded (its pipeline_cache) on `dev`, all at once
        with pipeline_async (the browser's compiles are issued now and go on while Python does). Returns an
        awaitable that puts them into dev's cache under the same keys, calls progress(done, total) after each
        and gives the count; a kernel that fails is left out (it fails again, with its error, where it is
        first used)."""
        import asyncio

        todo = [(key, dev.pipeline_async(r.wgsl, r.entry, r.constants))
                for key, r in recorded.items() if key not in dev.pipeline_cache]
        done = 0

        async def one(key: tuple, pending: Any) -> None:
            nonlocal done
            try:
                dev.pipeline_cache[key] = await pending
            except Exception:  # noqa: BLE001 - reported when the kernel is used
                pass
            done += 1
            if progress is not None:
                progress(done, len(todo))

        async def wait() -> int:
            await asyncio.gather(*(one(key, p) for key, p in todo))
            return len(todo)

        return wait()

    def scratch(self, nbytes: int) -> Any:
        """A shared scratch buffer of at least nbytes (split-K partial sums)."""
        if self._scratch is None or self._scratch[1] < nbytes:
            self._scratch = (self.dev.buffer(nbytes, label="scratch"), nbytes)
        return self._scratch[0]


def _one(vals: Sequence) -> list:
    """A per-group list, or one value when every group has it (the kernel then uses a literal)."""
    vals = list(vals)
    return vals[:1] if len(set(vals)) == 1 else vals


class MatMul:
    """Y[t, col] (=, +=, += gate *) act(W . X[t, group]) for a weight matrix W, as cached GPU ops.

    W holds P groups of NR rows each (group g reads X at x_off + g*x_gs and writes columns
    col0 + g*NR ...). W may be given as several row blocks (P == 1 only) when it exceeds the
    binding limit. Ops for a token count come from `ops(T)`: GEMV for few tokens, tiled GEMM else.
    `fmt` is the blocks' webrwkv.formats.WeightFormat: it names the weight-format files the kernels
    include and their template values.
    """

    def __init__(self, k: Kernels, meta: Any, blocks: Sequence[tuple], K: int, P: int, NR: int, x: Any, y: Any,
                 *, x_off: int = 0, x_ts: int, x_gs: int = 0, y_off: int = 0, y_ts: int, acts: Sequence[str] = ("none",),
                 mode: str = "store", gate: Any = None, g_off: int = 0, g_ts: int = 0, tsrc: int = 0,
                 ragged: Sequence[tuple] | None = None, mu: Any = None, mu_off: int = 0, fmt: Any) -> None:
        if K % 8 or x_off % 4 or x_ts % 4 or x_gs % 4 or any(xo % 4 for _, xo, _ in ragged or ()):
            raise GpuError(f"matmul shapes must be multiples of 8 (K={K}) and 4 (offsets); pad the weights")
        if mode not in ("store", "add", "gate", "lerp"):
            raise GpuError(f"unknown matmul epilogue {mode!r}")
        self.k, self.meta, self.blocks, self.K, self.P, self.NR = k, meta, list(blocks), K, P, NR
        # per block: [(rows, first W row, X offset, first output column)] for each group
        if ragged:
            rows = np.cumsum([0] + [r[0] for r in ragged])
            self.groups = [[(nr, int(rows[g]), xo, col) for g, (nr, xo, col) in enumerate(ragged)]]
            self.P = len(ragged)
        else:
            self.groups = [[(nr, g * nr, g * x_gs, row0 + g * nr) for g in range(P)] for _, row0, nr in blocks]
        self.x, self.y, self.gate, self.mu, self.fmt = x, y, gate, mu, fmt
        acts = list(acts) * (self.P if len(acts) == 1 else 1)
        self.p = dict(K=K, X_OFF=x_off, X_TS=x_ts, TSRC=tsrc, MODE=mode, Y_OFF=y_off, Y_TS=y_ts, G_OFF=g_off,
                      G_TS=g_ts, MU_OFF=mu_off, ACTS=_one(ACTS[a] for a in acts))
        if fmt.name == "nf4" and k.tuning.gemm_tk % 8:
            raise GpuError(f"NF4 matmuls need gemm_tk to be a multiple of 8, not {k.tuning.gemm_tk}")
        self._cache: dict[Any, list] = {}

    @staticmethod
    def _groups(groups: list) -> list:
        return [_one(g[i] for g in groups) for i in range(4)]

    def _values(self, kernel: str, groups: list) -> dict:
        """Template values of one row block: the matmul's, its groups' and its weight format's."""
        rows = max(g[0] + g[1] for g in groups)
        return dict(self.p, GROUPS=self._groups(groups), GATE_AT=4, **self.fmt.kernel_values(kernel, rows, self.K))

    def _gemv(self, mt: int) -> list:
        """GEMV pipelines for up to `mt` tokens per workgroup (the weights are read once for all of them)."""
        tu, k = self.k.tuning, self.k
        sub = int(bool(k.subgroups and tu.gemv_subgroups))
        out = []
        rpt, tpr = self.gemv_shape(mt)
        ngroups = max(1, self.gemv_wg() // tpr)  # row groups per workgroup
        rows = ngroups * rpt  # per workgroup
        ln = (rpt * mt - 1).bit_length()  # the subgroup reduction's halving steps
        npow = 1 << ln
        unroll = tu.gemv_unroll if mt == 1 else tu.gemv_mt_unroll
        for (buf, _, _), groups in zip(self.blocks, self.groups):
            pipe = k.get("gemv", **self._values("gemv", groups), R=rows, RPT=rpt, TPR=tpr, MT=mt, WG=ngroups * tpr,
                         TFIRST=int(self._tfirst(mt)),
                         UNROLL=max(1, unroll), SUBGROUPS=sub,
                         PART=ngroups * (tpr // min(4, tpr)) * npow, NP=npow, LN=ln,
                         BITS=[1 << s for s in range(ln)], HALF=[npow >> (s + 1) for s in range(ln)],
                         CNT=[npow >> s for s in range(ln + 1)],
                         ENABLE_SUBGROUPS=int(bool(sub and k.dev.subgroups_directive)))
            out.append((pipe, self._bind(pipe, buf), -(-max(g[0] for g in groups) // rows)))
        return out

    def _tfirst(self, mt: int) -> bool:
        """The GEMV grid goes by token group first (gemv_mt_tfirst; only where a workgroup serves several)."""
        return mt > 1 and bool(self.k.tuning.gemv_mt_tfirst)

    def gemv_wg(self) -> int:
        """Threads of a GEMV workgroup: gemv_rows x gemv_tpr, fewer where the device allows fewer (WebGPU's
        default limit is 256, and the browser's tuning asks for 512)."""
        tu = self.k.tuning
        return min(tu.gemv_rows * tu.gemv_tpr, self.k.dev.limits.get("max_workgroup_invocations", 256))

    def gemv_shape(self, mt: int) -> tuple[int, int]:
        """(rows a GEMV thread serves, threads a row). One token: one row, gemv_tpr threads (fewer where K
        is short: each makes a load). Several tokens: fewer threads where K is short (each makes 4 loads) and
        gemv_mt_rows rows, so each activation load serves them all; a short matrix then gets more threads a
        row (up to gemv_mt_tpr, while each still makes gemv_mt_loads loads a row) until its grid has gemv_mt_wg
        workgroups, or where it cannot, one row a thread (an H200 at L24, 8 tokens: FFN value 1.42 -> 1.03
        ms a step)."""
        tu = self.k.tuning
        wg = self.gemv_wg()
        rpt, tpr = max(1, tu.gemv_mt_rows), min(tu.gemv_tpr, wg)
        while tpr > 1 and self.K < (8 if mt == 1 else 32) * tpr:  # each thread makes 1 load (4 for several tokens)
            tpr //= 2
        base = tpr
        if mt == 1 or rpt == 1 or self.K < 32 * tpr:
            return 1, tpr
        nr = max(g[0] for g in self.groups[0])

        def grid(t: int) -> int:
            return -(-nr // (max(1, wg // t) * rpt)) * self.P

        while (grid(tpr) < tu.gemv_mt_wg and 2 * tpr <= min(wg, tu.gemv_mt_tpr)
               and self.K >= 16 * tu.gemv_mt_loads * tpr):
            tpr *= 2
        return (rpt, tpr) if grid(tpr) >= tu.gemv_mt_wg else (1, base)

    def _split(self, T: int) -> int:
        tu = self.k.tuning
        grid = -(-max(g[0] for g in self.groups[0]) // tu.gemm_tn) * -(-T // tu.gemm_tm) * self.P
        if grid >= tu.gemm_min_wg or self.K < 1024 or len(self.blocks) > 1:
            return 1
        ntot = sum(g[0] for g in self.groups[0])
        s = min(tu.gemm_max_split, -(-tu.gemm_min_wg // grid), self.K // max(tu.gemm_tk, tu.gemm_min_k))
        while s > 1 and s * self.k.max_rows * ntot * 4 > self.k.dev.limits["max_storage_binding"]:
            s -= 1
        return max(1, s)

    def _gemm(self, split: int) -> list:
        tu = self.k.tuning
        # the slices' K (gemm.wgsl) and count (gemm_sum.wgsl, by chunk size) are worked out in the kernels, so
        # one pipeline serves every split of this matrix: fewer kernels for the browser to compile at load
        tiles = -(-self.k.max_rows // tu.gemm_tm)
        splits = [self._split(i * tu.gemm_tm) for i in range(1, tiles + 1)]
        out = []
        for (buf, _, _), groups in zip(self.blocks, self.groups):
            nxt = -(-max(g[0] for g in groups) // tu.gemm_tn)
            ntot = sum(g[0] for g in groups)
            p = dict(self._values("gemm", groups), TM=tu.gemm_tm, TN=tu.gemm_tn, TK=tu.gemm_tk, MM=tu.gemm_mm,
                     NN=tu.gemm_nn, WG=(tu.gemm_tm // tu.gemm_mm) * (tu.gemm_tn // tu.gemm_nn), NXT=nxt,
                     MAXT=self.k.max_rows, NTOT=ntot)
            if split == 1:
                pipe = self.k.get("gemm", **p)
                out.append((pipe, self._bind(pipe, buf), nxt * split))
                continue
            scratch = self.k.scratch(split * self.k.max_rows * ntot * 4)
            pipe = self.k.get("gemm", **dict(p, MODE="partial"))
            out.append((pipe, self.k.dev.bind(pipe, [self.meta, buf, self.x, scratch]), nxt * split))
            red = self.k.get("gemm_sum", **dict(self.p, GROUPS=self._groups(groups), GATE_AT=3, NTOT=ntot,
                                                 TM=tu.gemm_tm, SPLITS=splits, NS=tiles, MAXT=self.k.max_rows,
                                                 P=len(groups)))
            ents = [self.meta, scratch, self.y] + ([self.gate] if self.gate is not None else [])
            ents += [self.mu] if self.mu is not None else []
            out.append((red, self.k.dev.bind(red, ents), -(-ntot // 64), "sum"))
        return out

    def _bind(self, pipe: Any, buf: Any) -> Any:
        entries = [self.meta, buf, self.x, self.y] + ([self.gate] if self.gate is not None else [])
        entries += [self.mu] if self.mu is not None else []
        return self.k.dev.bind(pipe, entries)

    def ops(self, T: int) -> list[tuple]:
        if T <= self.k.tuning.gemv_max_t:
            mt = 1 if T == 1 else max(1, min(MAX_MT, self.k.tuning.gemv_mt))  # two variants: each is a compile
            key = ("gemv", mt)
            if key not in self._cache:
                self._cache[key] = self._gemv(mt)
            tg = -(-T // mt)
            return [(p, b, (tg, n, self.P) if self._tfirst(mt) else (n, tg, self.P)) for p, b, n in self._cache[key]]
        split = self._split(T)
        if split not in self._cache:
            self._cache[split] = self._gemm(split)
        tm = self.k.tuning.gemm_tm
        return [(o[0], o[1], (o[2], T, 1)) if len(o) == 4 else (o[0], o[1], (o[2], -(-T // tm), self.P))
                for o in self._cache[split]]
