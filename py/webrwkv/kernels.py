"""Loads shaders/*.wgsl, fills their {{NAME}} template values, caches pipelines, and builds matmul ops.

Template values are compile-time constants (sizes, offsets, tile shapes), so every tuning knob
(workgroup sizes, tiles, rows per workgroup) is a plain Python value in `Tuning`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import GpuError

_HERE = Path(__file__).resolve().parent
SHADER_DIRS = (_HERE / "shaders", _HERE.parents[1] / "shaders")

ACTS = {"none": "x", "relu2": "max(x, 0.0) * max(x, 0.0)", "sigmoid": "sigmoid(x)",
        "tanh": "tanh(clamp(x, -15.0, 15.0))"}


@dataclass
class Tuning:
    """Kernel shape knobs; change them here, per runtime, or with $WEBRWKV_TUNING to tune for a GPU.
    Defaults were the best measured on H100/H200 (Vulkan) with v6/v7 L24 C2048."""

    gemv_rows: int = 8          # output rows per GEMV workgroup
    gemv_tpr: int = 32          # threads per output row (power of two)
    gemv_subgroups: int = 1     # reduce with subgroup shuffles when the device has them
    gemv_unroll: int = 4        # weight loads in flight per GEMV thread
    wkv_unroll: int = 1         # wkv state column in named registers (1) or a loop over an array (0)
    gemv_max_t: int = 1         # use GEMV when a matmul has at most this many tokens
    gemm_tm: int = 64           # tokens per GEMM tile
    gemm_tn: int = 64           # output rows per GEMM tile
    gemm_tk: int = 16           # K step of the GEMM tile
    gemm_mm: int = 4            # tokens per thread in the GEMM tile (multiple of 4)
    gemm_nn: int = 4            # output rows per thread in the GEMM tile (multiple of 4)
    mix_rows: int = 16          # rows per ln_mix workgroup
    mix_wg: int = 256           # channels per ln_mix workgroup (a power of two dividing C)
    submit_ops: int = 48        # dispatches per submit (a step is split so the GPU starts early)
    gemm_min_wg: int = 264      # split K when a GEMM grid has fewer workgroups than this
    gemm_max_split: int = 8     # at most this many K slices


def state_code(hs: int, unroll: bool, **bodies: str) -> dict[str, str]:
    """Per-thread state column code for the wkv kernels: a loop over an array, or (unroll) one
    named register per element so the loads issue back to back. Bodies use @S (element), @J (index)."""
    out = {"DECL": f"  var st: array<f32, {hs}>;" if not unroll else
           "  " + " ".join(f"var s{j}: f32;" for j in range(hs))}
    for key, body in bodies.items():
        if unroll:
            out[key] = "\n".join("    " + body.replace("@S", f"s{j}").replace("@J", f"{j}u") for j in range(hs))
        else:
            out[key] = f"    for (var j = 0u; j < {hs}u; j++) {{ {body.replace('@S', 'st[j]').replace('@J', 'j')} }}"
    return out


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


def _include(text: str) -> str:
    return re.sub(r"^#include (\w+)\s*$", lambda m: shader_source(m.group(1)), text, flags=re.M)


def _fill(text: str, params: dict) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda m: str(params[m.group(1)]) if m.group(1) in params else m.group(0), text)


class Kernels:
    """Pipeline factory and cache for one device."""

    def __init__(self, device: Any, tuning: Tuning | None = None) -> None:
        self.dev = device
        self.tuning = tuning or tuning_from_env()
        self._text: dict[str, str] = {}
        # pipelines depend only on their source, so runtimes on one device share them
        if not hasattr(device, "_webrwkv_pipelines"):
            device._webrwkv_pipelines = {}
        self._pipes: dict[tuple, Any] = device._webrwkv_pipelines
        self.subgroups = "subgroups" in device.features
        self.max_rows = 128  # most tokens per step (the runtime sets it); sizes split-K scratch
        self._scratch: Any = None

    def source(self, name: str, params: dict) -> str:
        if name not in self._text:
            self._text[name] = _include(shader_source(name))
        out = _fill(self._text[name], params)
        if "#include" in out:  # includes named by template values (a matmul's weight format)
            out = _fill(_include(out), params)
        missing = set(re.findall(r"\{\{(\w+)\}\}", out))
        if missing:
            raise GpuError(f"kernel {name}: template values {sorted(missing)} not given")
        return out

    def get(self, name: str, **params: Any) -> Any:
        key = (name, tuple(sorted(params.items())))
        pipe = self._pipes.get(key)
        if pipe is None:
            pipe = self._pipes[key] = self.dev.pipeline(self.source(name, params), "main")
        return pipe


    def scratch(self, nbytes: int) -> Any:
        """A shared scratch buffer of at least nbytes (split-K partial sums)."""
        if self._scratch is None or self._scratch[1] < nbytes:
            self._scratch = (self.dev.buffer(nbytes, label="scratch"), nbytes)
        return self._scratch[0]


class MatMul:
    """Y[t, col] (=, +=, += gate *) act(W . X[t, group]) for a packed fp16 W, as cached GPU ops.

    W holds P groups of NR rows each (group g reads X at x_off + g*x_gs and writes columns
    col0 + g*NR ...). W may be given as several row blocks (P == 1 only) when it exceeds the
    binding limit. Ops for a token count come from `ops(T)`: GEMV for few tokens, tiled GEMM else.
    With int8=True the blocks hold int8 rows plus per-row scales (webrwkv.quant.upload_int8);
    with nf4=True NF4 codes plus per-64-weight scales (webrwkv.quant.upload_nf4).
    """

    def __init__(self, k: Kernels, meta: Any, blocks: Sequence[tuple], K: int, P: int, NR: int, x: Any, y: Any,
                 *, x_off: int = 0, x_ts: int, x_gs: int = 0, y_off: int = 0, y_ts: int, acts: Sequence[str] = ("none",),
                 mode: str = "store", gate: Any = None, g_off: int = 0, g_ts: int = 0, tsrc: int = 0,
                 ragged: Sequence[tuple] | None = None, mu: Any = None, mu_off: int = 0, int8: bool = False,
                 nf4: bool = False) -> None:
        if K % 8 or x_off % 4 or x_ts % 4 or x_gs % 4 or any(xo % 4 for _, xo, _ in ragged or ()):
            raise GpuError(f"matmul shapes must be multiples of 8 (K={K}) and 4 (offsets); pad the weights")
        self.k, self.meta, self.blocks, self.K, self.P, self.NR = k, meta, list(blocks), K, P, NR
        # per block: [(rows, first W row, X offset, first output column)] for each group
        if ragged:
            rows = np.cumsum([0] + [r[0] for r in ragged])
            self.groups = [[(nr, int(rows[g]), xo, col) for g, (nr, xo, col) in enumerate(ragged)]]
            self.P = len(ragged)
        else:
            self.groups = [[(nr, g * nr, g * x_gs, row0 + g * nr) for g in range(P)] for _, row0, nr in blocks]
        self.x, self.y, self.gate = x, y, gate
        self.p = dict(K=K, X_OFF=x_off, X_TS=x_ts, TSRC=tsrc)
        acts = list(acts) * (P if len(acts) == 1 else 1)
        if len(set(acts)) == 1:
            act = f"fn act(g: u32, x: f32) -> f32 {{ return {ACTS[acts[0]]}; }}"
        else:
            cases = " ".join(f"case {i}u: {{ return {ACTS[a]}; }}" for i, a in enumerate(acts))
            act = f"fn act(g: u32, x: f32) -> f32 {{ switch g {{ {cases} default: {{ return x; }} }} }}"
        yi = f"{y_off}u + t * {y_ts}u + col"
        # "lerp" (v6 token shift): gate = [x_x, d, x'] rows; y = x' + d * (mu[col] + v), col modulo g_off
        lerp = (f"let gi = t * {g_ts}u + col % {g_off or 1}u;\n    "
                f"y[{yi}] = gate[gi + {2 * g_off}u] + gate[gi + {g_off}u] * (mu[{mu_off}u + col] + v);")
        epi = {"store": f"y[{yi}] = v;", "add": f"y[{yi}] = y[{yi}] + v;",
               "gate": f"y[{yi}] = y[{yi}] + gate[{g_off}u + t * {g_ts}u + col] * v;", "lerp": lerp}[mode]
        self.mode, self.epi = mode, epi
        self.mu = mu
        self.int8 = int8
        self.nf4 = nf4
        if nf4 and k.tuning.gemm_tk % 8:
            raise GpuError(f"NF4 matmuls need gemm_tk to be a multiple of 8, not {k.tuning.gemm_tk}")
        self.p.update(ACT=act, EPILOGUE=epi, GATE_DECL=self._decl(4))
        self._cache: dict[str, list] = {}

    def _gemv(self) -> list:
        tu, k = self.k.tuning, self.k
        sub = k.subgroups and tu.gemv_subgroups
        tpr, rows = tu.gemv_tpr, tu.gemv_rows
        if sub:
            # butterfly over lanes of one subgroup (up to TPR wide), then partials through shared memory
            reduce = ("let wd = min(sg_size, TPR);\n  var v = acc;\n"
                      "  for (var m = 1u; m < wd; m = m << 1u) { v += subgroupShuffleXor(v, m); }\n"
                      "  if (sg_id % wd == 0u) { red[lid / wd] = v; }\n  workgroupBarrier();\n  var total = 0.0;\n"
                      "  if (j == 0u) { let per = TPR / wd; for (var q = 0u; q < per; q++) "
                      "{ total += red[nl * per + q]; } }")
            args = ", @builtin(subgroup_size) sg_size: u32, @builtin(subgroup_invocation_id) sg_id: u32"
        else:
            reduce = ("red[lid] = acc;\n  workgroupBarrier();\n"
                      "  for (var s = TPR / 2u; s > 0u; s = s >> 1u) { if (j < s) { red[lid] += red[lid + s]; } "
                      "workgroupBarrier(); }\n  let total = red[lid];")
            args = ""
        u = max(1, tu.gemv_unroll)
        unrolled = "\n".join(f"      let q{i} = w[wb + k + {i}u * TPR];" for i in range(u))
        if self.nf4:
            unrolled = "      let sb = SB + wb / K8 * NB;\n" + unrolled
            unrolled += "\n" + "\n".join(
                f"      acc += bitcast<f32>(w[sb + (k + {i}u * TPR) / 8u]) * "
                f"(dot(nf(q{i}, 0u), xv[xb + 2u * (k + {i}u * TPR)]) + "
                f"dot(nf(q{i}, 16u), xv[xb + 2u * (k + {i}u * TPR) + 1u]));" for i in range(u))
        elif self.int8:
            unrolled += "\n" + "\n".join(
                f"      acc += dot(i4(q{i}.x), xv[xb + 2u * (k + {i}u * TPR)]) + "
                f"dot(i4(q{i}.y), xv[xb + 2u * (k + {i}u * TPR) + 1u]);" for i in range(u))
        else:
            unrolled += "\n" + "\n".join(
                f"      acc += dot(vec4<f32>(h2(q{i}.x), h2(q{i}.y)), xv[xb + 2u * (k + {i}u * TPR)]) + "
                f"dot(vec4<f32>(h2(q{i}.z), h2(q{i}.w)), xv[xb + 2u * (k + {i}u * TPR) + 1u]);" for i in range(u))
        out = []
        for (buf, _, _), groups in zip(self.blocks, self.groups):
            name, q = self._kernel("gemv", groups)
            pipe = k.get(name, **self.p, **q, GROUPS=self._group_fns(groups), R=rows, TPR=tpr, WG=rows * tpr,
                         UNROLL=u, UNROLLED=unrolled,
                         REDUCE=reduce, SG_ARGS=args, ENABLE=k.dev.subgroup_directive if sub else "")
            out.append((pipe, self._bind(pipe, buf), -(-max(g[0] for g in groups) // rows)))
        return out

    def _kernel(self, name: str, groups: list) -> tuple[str, dict]:
        """Kernel name and its weight format's template values for one block (int8, nf4: scales follow its rows)."""
        if not (self.int8 or self.nf4):
            return name, {"FORMAT": name + "_fp16"}
        rows = max(g[0] + g[1] for g in groups)
        if self.nf4:
            return name, {"FORMAT": name + "_nf4", "SB": rows * self.K // 8}
        return name, {"FORMAT": name + "_int8", "SB": rows * self.K // 4}

    def _decl(self, first: int) -> str:
        decl = ""
        if self.mode in ("gate", "lerp"):
            decl = f"@group(0) @binding({first}) var<storage, read> gate: array<f32>;"
        if self.mode == "lerp":
            decl += f"\n@group(0) @binding({first + 1}) var<storage, read> mu: array<f32>;"
        return decl

    def _split(self, T: int) -> int:
        tu = self.k.tuning
        grid = -(-max(g[0] for g in self.groups[0]) // tu.gemm_tn) * -(-T // tu.gemm_tm) * self.P
        if grid >= tu.gemm_min_wg or self.K < 1024 or len(self.blocks) > 1:
            return 1
        ntot = sum(g[0] for g in self.groups[0])
        s = min(tu.gemm_max_split, -(-tu.gemm_min_wg // grid), self.K // 512)
        while s > 1 and s * self.k.max_rows * ntot * 4 > self.k.dev.limits["max_storage_binding"]:
            s -= 1
        return max(1, s)

    def _gemm(self, split: int) -> list:
        tu = self.k.tuning
        mm, nn = tu.gemm_mm, tu.gemm_nn
        accs = [(i, q) for i in range(mm) for q in range(nn // 4)]
        decl = "\n".join(f"  var c{i}_{q} = vec4<f32>(0.0);" for i, q in accs)
        inner = "\n".join(f"      let b{q} = ws[kk * (TN / 4u) + tn * {nn // 4}u + {q}u];" for q in range(nn // 4))
        inner += "\n" + "\n".join(f"      let a{p} = xs[kk * (TM / 4u) + tm * {mm // 4}u + {p}u];" for p in range(mm // 4))
        inner += "\n" + "\n".join(f"      c{i}_{q} += a{i // 4}.{'xyzw'[i % 4]} * b{q};" for i, q in accs)
        store = "\n".join(f"  store(m0 + tm * {mm}u + {i}u, n0 + tn * {nn}u + {4 * q + c}u, T, g, c{i}_{q}.{'xyzw'[c]}, ks);"
                          for i, q in accs for c in range(4))
        kc = -(-self.K // split // tu.gemm_tk) * tu.gemm_tk
        out = []
        for (buf, _, _), groups in zip(self.blocks, self.groups):
            nxt = -(-max(g[0] for g in groups) // tu.gemm_tn)
            p = dict(self.p, GROUPS=self._group_fns(groups), TM=tu.gemm_tm, TN=tu.gemm_tn, TK=tu.gemm_tk, MM=mm, NN=nn,
                     WG=(tu.gemm_tm // mm) * (tu.gemm_tn // nn), ACC_DECL=decl, INNER=inner, STORE=store, NXT=nxt, KC=kc)
            name, q = self._kernel("gemm", groups)
            p.update(q)
            if split == 1:
                pipe = self.k.get(name, **p)
                out.append((pipe, self._bind(pipe, buf), nxt * split))
                continue
            ntot = sum(g[0] for g in groups)
            scratch = self.k.scratch(split * self.k.max_rows * ntot * 4)
            p.update(ACT="fn act(g: u32, x: f32) -> f32 { return x; }", GATE_DECL="",
                     EPILOGUE=f"y[(ks * {self.k.max_rows}u + t) * {ntot}u + g_row(g) + n] = v;")
            pipe = self.k.get(name, **p)
            out.append((pipe, self.k.dev.bind(pipe, [self.meta, buf, self.x, scratch]), nxt * split))
            red = self.k.get("gemm_sum", ACT=self.p["ACT"], GROUPS=p["GROUPS"], GATE_DECL=self._decl(3),
                             EPILOGUE=self.epi, NTOT=ntot, SPLIT=split, MAXT=self.k.max_rows, P=len(groups),
                             TSRC=self.p["TSRC"])
            ents = [self.meta, scratch, self.y] + ([self.gate] if self.gate is not None else [])
            ents += [self.mu] if self.mu is not None else []
            out.append((red, self.k.dev.bind(red, ents), -(-ntot // 64), "sum"))
        return out

    @staticmethod
    def _group_fns(groups: list) -> str:
        out = []
        for name, idx in (("g_nr", 0), ("g_row", 1), ("g_x", 2), ("g_col", 3)):
            vals = [g[idx] for g in groups]
            if len(set(vals)) == 1:
                out.append(f"fn {name}(g: u32) -> u32 {{ return {vals[0]}u; }}")
            else:
                cases = " ".join(f"case {i}u: {{ return {v}u; }}" for i, v in enumerate(vals))
                out.append(f"fn {name}(g: u32) -> u32 {{ switch g {{ {cases} default: {{ return 0u; }} }} }}")
        return "\n".join(out)

    def _bind(self, pipe: Any, buf: Any) -> Any:
        entries = [self.meta, buf, self.x, self.y] + ([self.gate] if self.gate is not None else [])
        entries += [self.mu] if self.mu is not None else []
        return self.k.dev.bind(pipe, entries)

    def ops(self, T: int) -> list[tuple]:
        if T <= self.k.tuning.gemv_max_t:
            if "gemv" not in self._cache:
                self._cache["gemv"] = self._gemv()
            return [(p, b, (n, T, self.P)) for p, b, n in self._cache["gemv"]]
        split = self._split(T)
        if split not in self._cache:
            self._cache[split] = self._gemm(split)
        tm = self.k.tuning.gemm_tm
        return [(o[0], o[1], (o[2], T, 1)) if len(o) == 4 else (o[0], o[1], (o[2], -(-T // tm), self.P))
                for o in self._cache[split]]


def upload_matrix(dev: Any, w: np.ndarray, label: str, pad_k: int = 8) -> tuple[list[tuple], int]:
    """Upload an [N, K] matrix (any float dtype) as packed fp16 row blocks that fit the binding limit.

    Returns ([(buffer, first_row, rows)], K_padded). K is zero-padded to a multiple of `pad_k`.
    """
    N, K = w.shape
    Kp = -(-K // pad_k) * pad_k
    if Kp == K and w.dtype == np.float16:
        h = np.ascontiguousarray(w)
    else:
        h = np.zeros((N, Kp), np.float16)
        h[:, :K] = w
    return upload_fp16_rows(dev, memoryview(h).cast("B"), N, Kp, label), Kp


def row_split(dev: Any, rows: int, row_bytes: int) -> list[tuple[int, int]]:
    """[(first row, rows)] blocks of at most the binding limit (multiples of 64 rows when split); every
    weight format splits its matrices this way."""
    limit = min(dev.limits["max_storage_binding"], dev.limits["max_buffer_size"])
    per = max(1, limit // row_bytes)
    if per < rows and per >= 64:
        per -= per % 64
    return [(r0, min(per, rows - r0)) for r0 in range(0, rows, per)]


def upload_fp16_rows(dev: Any, data: Any, N: int, K: int, label: str) -> list[tuple]:
    """Byte-oriented upload: `data` holds N rows of K little-endian fp16 values (K % 8 == 0).

    Splits the rows into blocks within min(maxStorageBufferBindingSize, maxBufferSize); returns
    [(buffer, first_row, rows)]. Raw fp16 bytes from a file can go straight through this path.
    """
    mv = memoryview(data).cast("B")
    blocks = []
    for r0, n in row_split(dev, N, K * 2):
        buf = dev.buffer(n * K * 2, label=f"{label}[{r0}]")
        dev.write(buf, 0, mv[r0 * K * 2: (r0 + n) * K * 2])
        blocks.append((buf, r0, n))
    return blocks
