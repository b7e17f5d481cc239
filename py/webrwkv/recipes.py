"""GPU recipes of one RWKV block per version: weights to GPU buffers, and the step's op generators.

Each layer becomes a list of generators `f(shape) -> [ops]` where shape = (T, nseg, nout, chunks);
the runtime evaluates them once per shape and caches the flat op list.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .kernels import Kernels, MatMul, pow2_divisor, state_code, upload_matrix

Gen = Callable[[tuple], list]
Upload = Callable[[Any, Any, str], tuple]  # upload(dev, matrix, label) -> (row blocks, padded K)

# Per-layer vectors, in vecs-buffer order (after ln1.w, ln1.b, ln2.w, ln2.b), per version.
VECS = {
    "v4": ["att.time_mix_r", "att.time_mix_k", "att.time_mix_v", "att.time_decay", "att.time_first",
           "ffn.time_mix_k", "ffn.time_mix_r"],
    "v5": ["att.time_mix_r", "att.time_mix_k", "att.time_mix_v", "att.time_mix_g", "att.time_decay",
           "att.time_faaaa", "att.ln_x.weight", "att.ln_x.bias", "ffn.time_mix_k", "ffn.time_mix_r"],
    "v6": ["att.time_maa_x", "att.time_maa_r", "att.time_maa_k", "att.time_maa_v", "att.time_maa_g",
           "att.time_maa_w", "att.time_decay", "att.time_faaaa", "att.ln_x.weight", "att.ln_x.bias",
           "ffn.time_maa_k", "ffn.time_maa_r"],
    "v7": ["att.x_w", "att.x_a", "att.x_g", "att.x_v", "att.x_r", "att.x_k", "att.w0", "att.a0", "att.v0",
           "att.k_k", "att.k_a", "att.r_k", "att.ln_x.weight", "att.ln_x.bias", "ffn.x_k"],
}
HEAD_VECS = ["blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias"]


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


def pad64(n: int) -> int:
    return -(-n // 64) * 64


def vec_names(version: str) -> list[str]:
    return ["ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"] + VECS[version]


def pack_vecs(info: Any, w: dict) -> tuple[np.ndarray, dict, int]:
    """All per-channel vectors as one f32 array: per-layer blocks of stride VS, then the global ones."""
    C, names = info.n_embd, vec_names(info.version)
    vs = pad64(len(names) * C)
    out = np.zeros(vs * info.n_layer + len(HEAD_VECS) * C, np.float32)
    for i in range(info.n_layer):
        for j, n in enumerate(names):
            v = w.get(f"blocks.{i}.{n}")
            if v is not None:
                out[i * vs + j * C: i * vs + (j + 1) * C] = np.asarray(v, np.float32).reshape(-1)
    base = vs * info.n_layer
    for j, n in enumerate(HEAD_VECS):
        out[base + j * C: base + (j + 1) * C] = mat(w[n]).reshape(-1)
    return out, {n: j * C for j, n in enumerate(names)}, vs


def state_geometry(info: Any) -> tuple[int, dict]:
    """Per-layer state stride (floats, 256-byte aligned) and offsets inside one layer."""
    C = info.n_embd
    if info.version == "v4":
        offs = {"att_x": (0, (C,)), "ffn_x": (C, (C,)), "att_aa": (2 * C, (C,)), "att_bb": (3 * C, (C,)),
                "att_pp": (4 * C, (C,))}
        return pad64(5 * C), offs
    H, S = info.n_head, info.head_size
    offs = {"att_x": (0, (C,)), "ffn_x": (C, (C,)), "att_kv": (2 * C, (H, S, S))}
    return pad64(2 * C + H * S * S), offs


class LayerBuilder:
    """Uploads one model's weights and makes the per-layer op generators; `bufs` are the activations.

    Every matrix goes through `mat()` / `pad_end()` / `stack()` and then `upload(dev, matrix, label)`
    (default kernels.upload_matrix), so a loader may pass deferred matrices with its own upload.
    quant="int8" stores these block matrices as int8 with per-row scales (webrwkv.quant) instead;
    quant="nf4" as NF4 codes with one scale per 64 weights; both are quantized on the GPU after an
    fp16 upload (a custom upload hook is called with quant=... and quantizes itself).
    """

    def __init__(self, k: Kernels, info: Any, w: dict, bufs: dict, vecs_buf: Any, vec_off: dict, vs: int,
                 state: Any, ls: int, slot_stride: int, n_slots: int, upload: Upload = upload_matrix,
                 quant: str = "none") -> None:
        self.k, self.dev, self.info, self.w, self.b = k, k.dev, info, w, bufs
        self.upload = upload
        self.int8, self.nf4 = quant == "int8", quant == "nf4"
        if quant != "none":  # fp16 up through `upload`, then quantized on the GPU (quant.layer_upload)
            from .quant import layer_upload

            self.upload = layer_upload(quant, upload)
        self.vecs, self.vo, self.vs = vecs_buf, vec_off, vs
        self.state, self.ls, self.slot, self.n_slots = state, ls, slot_stride, n_slots
        self.C = info.n_embd
        self.wg = pow2_divisor(self.C)
        self.weight_bytes = 0
        self.split_matrices = 0  # matrices uploaded as several row blocks / groups (binding limit)

    # -- helpers ------------------------------------------------------------------------
    def vec_bind(self, i: int) -> tuple:
        return (self.vecs, i * self.vs * 4, self.vs * 4)

    def state_bind(self, i: int) -> tuple:
        return (self.state, i * self.ls * 4, ((self.n_slots - 1) * self.slot + self.ls) * 4)

    def _upload(self, m: Any, label: str) -> tuple[list, int]:
        """Upload one matrix and count its GPU bytes (fp16: 2 per weight; int8: 1 plus a scale per row;
        nf4: 1/2 plus a scale per 64 weights)."""
        blocks, Kp = self.upload(self.dev, m, label)
        if self.nf4:
            from .quant import nf4_bytes

            self.weight_bytes += nf4_bytes(m.shape[0], Kp)
        else:
            self.weight_bytes += m.shape[0] * (Kp + 4) if self.int8 else m.shape[0] * Kp * 2
        return blocks, Kp

    def matmul(self, mats: list, x: Any, y: Any, label: str, pad_rows: int = 0, **kw: Any) -> list[Gen]:
        """One grouped matmul over `mats` (equal shapes), or one per group when too big to bind."""
        mats = [mat(m) for m in mats]
        if pad_rows:
            mats = [pad_end(m, pad_rows, m.shape[1]) for m in mats]
        NR = mats[0].shape[0]
        cat = stack(mats)
        limit = min(self.dev.limits["max_storage_binding"], self.dev.limits["max_buffer_size"])
        Kp = -(-cat.shape[1] // 8) * 8
        if len(mats) == 1 or cat.shape[0] * Kp * 2 <= limit:
            blocks, Kp = self._upload(cat, label)
            self.split_matrices += len(blocks) > 1
            if len(mats) > 1:
                blocks = [(blocks[0][0], 0, NR)]
            mm = [MatMul(self.k, self.b["meta"], blocks, Kp, len(mats), NR, x, y, int8=self.int8, nf4=self.nf4,
                         **kw)]
        else:
            acts = kw.pop("acts", ("none",))
            x_off, x_gs = kw.pop("x_off", 0), kw.pop("x_gs", 0)
            mm = []
            self.split_matrices += 1
            for g, m in enumerate(mats):
                blocks, Kp = self._upload(m, f"{label}.{g}")
                blocks = [(b, r0 + g * NR, n) for b, r0, n in blocks]
                mm.append(MatMul(self.k, self.b["meta"], blocks, Kp, 1, NR, x, y, x_off=x_off + g * x_gs,
                                 acts=(acts[g % len(acts)],), int8=self.int8, nf4=self.nf4, **kw))
        return [lambda s, m=m: m.ops(s[0]) for m in mm]

    def fused(self, parts: list, x: Any, y: Any, label: str, x_off: int = 0, **kw: Any) -> list[Gen]:
        """Several matrices with the same input width in ONE dispatch (ragged groups).

        parts: [(matrix [rows, K], X offset of its input, activation)]; outputs are side by side
        from column 0. Falls back to one matmul per part when the stack exceeds the binding limit.
        """
        mats = [mat(m) for m, _, _ in parts]
        cols = np.cumsum([0] + [m.shape[0] for m in mats])
        cat = stack(mats)
        limit = min(self.dev.limits["max_storage_binding"], self.dev.limits["max_buffer_size"])
        Kp = -(-cat.shape[1] // 8) * 8
        if cat.shape[0] * Kp * 2 > limit:
            self.split_matrices += 1
            gens = []
            for (m, xo, act), c0 in zip(parts, cols):
                blocks, Kp = self._upload(m, label)
                blocks = [(b, r0 + int(c0), n) for b, r0, n in blocks]
                mm = MatMul(self.k, self.b["meta"], blocks, Kp, 1, m.shape[0], x, y, x_off=x_off + xo,
                            acts=(act,), int8=self.int8, nf4=self.nf4, **kw)
                gens.append(lambda s, mm=mm: mm.ops(s[0]))
            return gens
        blocks, Kp = self._upload(cat, label)
        ragged = [(m.shape[0], xo, int(c0)) for m, (_, xo, _), c0 in zip(mats, parts, cols)]
        mm = MatMul(self.k, self.b["meta"], blocks, Kp, len(parts), 0, x, y, x_off=x_off,
                    acts=[a for _, _, a in parts], ragged=ragged, int8=self.int8, nf4=self.nf4, **kw)
        return [lambda s: mm.ops(s[0])]

    def op(self, name: str, entries: list, dims: Callable[[tuple], tuple], **params: Any) -> Gen:
        pipe = self.k.get(name, **params)
        group = self.dev.bind(pipe, entries)
        return lambda s: [(pipe, group, dims(s))]

    def ln_mix(self, i: int, out: Any, nmix: int, nout: int, ln: str, mu: str, lerp_prev: bool,
               xoff: int, extra: int = 0) -> Gen:
        expr = "b + (a - b) * m{j}" if lerp_prev else "a + (b - a) * m{j}"
        mu0 = self.vo[mu]
        loads = "\n".join(f"  let m{j} = vecs[{mu0 + j * self.C}u + c];" for j in range(nmix))
        stores = [f"    out[o + {j * self.C}u] = {expr.format(j=j)};" for j in range(nmix)]
        if extra:  # v6: also d = x'_prev - x' and x' itself
            stores += [f"    out[o + {nmix * self.C}u] = b - a;", f"    out[o + {(nmix + 1) * self.C}u] = a;"]
        rpw, wg = self.k.tuning.mix_rows, min(self.k.tuning.mix_wg, self.wg)
        cb = self.C // wg
        return self.op("mix", [self.b["meta"], self.b["x"], self.vec_bind(i), self.state_bind(i), out],
                       lambda s: ((-(-s[3] // rpw) if s[3] else 1) * cb, s[1], 1),
                       C=self.C, WG=wg, NOUT=nout, RPW=rpw, SLOT=self.slot, XOFF=xoff,
                       LNW=self.vo[ln + ".weight"], LNB=self.vo[ln + ".bias"], MU_LOAD=loads,
                       MIX_STORE="\n".join(stores))

    # -- blocks ---------------------------------------------------------------------------
    def ffn(self, i: int) -> list[Gen]:
        C, F, b, v = self.C, self.info.dim_ffn, self.b, self.info.version
        f = f"blocks.{i}.ffn."
        kx = "ffn.x_k" if v == "v7" else ("ffn.time_maa_k" if v == "v6" else "ffn.time_mix_k")
        nmix = 1 if v == "v7" else 2
        gens = [self.ln_mix(i, b["mix"], nmix, nmix, "ln2", kx, v in ("v4", "v5"), C)]
        if v == "v7":
            gens += self.matmul([self.w[f + "key.weight"]], b["mix"], b["hid"], f + "key", x_ts=C, y_ts=F,
                                acts=("relu2",))
            return gens + self.matmul([self.w[f + "value.weight"]], b["hid"], b["x"], f + "value", x_ts=F,
                                      y_ts=C, mode="add")
        # key (relu^2) and receptance (sigmoid) in one dispatch: hid = [k | r]
        gens += self.fused([(self.w[f + "key.weight"], 0, "relu2"), (self.w[f + "receptance.weight"], C, "sigmoid")],
                           b["mix"], b["hid"], f + "key+receptance", x_ts=2 * C, y_ts=F + C)
        return gens + self.matmul([self.w[f + "value.weight"]], b["hid"], b["x"], f + "value", x_ts=F + C, y_ts=C,
                                  mode="gate", gate=b["hid"], g_off=F, g_ts=F + C)

    def att(self, i: int) -> list[Gen]:
        return getattr(self, "att_" + self.info.version)(i)

    def _proj(self, i: int, names: str, src: Any, x_off: int, x_ts: int) -> list[Gen]:
        a, C = f"blocks.{i}.att.", self.C
        mats = [self.w[a + n + ".weight"] for n in names.split()]
        return self.matmul(mats, src, self.b["proj"], a + "proj", x_off=x_off, x_ts=x_ts, x_gs=C,
                           y_ts=len(mats) * C)

    def _out(self, i: int) -> list[Gen]:
        a = f"blocks.{i}.att."
        return self.matmul([self.w[a + "output.weight"]], self.b["y"], self.b["x"], a + "output",
                           x_ts=self.C, y_ts=self.C, mode="add")

    def _wkv5(self, i: int, ddlerp: int, pts: int) -> Gen:
        info, b = self.info, self.b
        return self.op("wkv5", [b["meta"], b["proj"], b["dd"], self.vec_bind(i), self.state_bind(i), b["y"]],
                       lambda s: (info.n_head, s[1], 1), C=self.C, WG=info.head_size, SLOT=self.slot, KV=2 * self.C,
                       PTS=pts, **state_code(info.head_size, self.k.tuning.wkv_unroll,
                                             LOAD="@S = state[sb + @J * HS];", STORE="state[sb + @J * HS] = @S;",
                                             STEP="{ let kv = sk[@J] * v; acc += sr[@J] * (su[@J] * kv + @S); "
                                                  "@S = sw[@J] * @S + kv; }"),
                       FIRST=self.vo["att.time_faaaa"], DECAY=self.vo["att.time_decay"], DDLERP=ddlerp,
                       LNXW=self.vo["att.ln_x.weight"], LNXB=self.vo["att.ln_x.bias"], EPS="64e-5")

    def att_v4(self, i: int) -> list[Gen]:
        C, b = self.C, self.b
        gens = [self.ln_mix(i, b["mix"], 3, 3, "ln1", "att.time_mix_r", True, 0)]
        gens += self._proj(i, "receptance key value", b["mix"], 0, 3 * C)
        wg = min(64, self.wg)
        gens.append(self.op("wkv4", [b["meta"], b["proj"], self.vec_bind(i), self.state_bind(i), b["y"]],
                            lambda s: (C // wg, s[1], 1), C=C, WG=wg, SLOT=self.slot, AA=2 * C, PTS=3 * C,
                            DECAY=self.vo["att.time_decay"], FIRST=self.vo["att.time_first"]))
        return gens + self._out(i)

    def att_v5(self, i: int) -> list[Gen]:
        C, b = self.C, self.b
        gens = [self.ln_mix(i, b["mix"], 4, 4, "ln1", "att.time_mix_r", True, 0)]
        gens += self._proj(i, "receptance key value gate", b["mix"], 0, 4 * C)
        return gens + [self._wkv5(i, 0, 4 * C)] + self._out(i)

    def att_v6(self, i: int) -> list[Gen]:
        C, b, a, w = self.C, self.b, f"blocks.{i}.att.", self.w
        D = self.info.dims["time_maa"]
        Dp = -(-D // 8) * 8
        gens = [self.ln_mix(i, b["mix"], 1, 3, "ln1", "att.time_maa_x", False, 0, extra=1)]
        w1 = mat(w[a + "time_maa_w1"]).reshape(5, D, C)
        order = [3, 1, 2, 4, 0]  # official w k v r g -> r k v g w
        gens += self.matmul([w1[j] for j in order], b["mix"], b["h"], a + "maa1", pad_rows=Dp, x_ts=3 * C,
                            y_ts=5 * Dp, acts=("tanh",))
        w2 = mat(w[a + "time_maa_w2"])
        # second LoRA stage with the data-dependent mixes fused in: mix2[t, j] = x' + d * (mu_j + m_j)
        gens += self.matmul([w2[j] for j in order], b["h"], b["mix2"], a + "maa2", x_ts=5 * Dp, x_gs=Dp, y_ts=5 * C,
                            mode="lerp", gate=b["mix"], g_off=C, g_ts=3 * C, mu=self.vec_bind(i),
                            mu_off=self.vo["att.time_maa_r"])
        Dw = self.info.dims["time_decay"]
        Dwp = -(-Dw // 8) * 8
        pts = 4 * C + Dwp  # proj = [r | k | v | g | decay LoRA hidden]
        d1 = mat(w[a + "time_decay_w1"])
        d1 = pad_end(d1, Dwp, d1.shape[1])
        parts = [(w[a + n + ".weight"], j * C, "none") for j, n in enumerate(("receptance", "key", "value", "gate"))]
        gens += self.fused(parts + [(d1, 4 * C, "tanh")], b["mix2"], b["proj"], a + "proj", x_ts=5 * C, y_ts=pts)
        gens += self.matmul([w[a + "time_decay_w2"]], b["proj"], b["dd"], a + "decay2", x_off=4 * C, x_ts=pts,
                            y_ts=C)
        return gens + [self._wkv5(i, 1, pts)] + self._out(i)

    def att_v7(self, i: int) -> list[Gen]:
        C, b, a, w, info = self.C, self.b, f"blocks.{i}.att.", self.w, self.info
        gens = [self.ln_mix(i, b["mix"], 6, 6, "ln1", "att.x_w", False, 0)]
        names = "wag" if i == 0 else "wagv"
        dp = self.lora_dim()
        pts = 3 * C + len(names) * dp  # proj = [v | r | k | LoRA hiddens w a g (v)]
        parts = [(w[a + n + ".weight"], (3 + j) * C, "none") for j, n in enumerate(("value", "receptance", "key"))]
        acts = {"w": "tanh", "a": "none", "g": "sigmoid", "v": "none"}
        parts += [(pad_end(mat(w[a + n + "1"]), dp, w[a + n + "1"].shape[1]), j * C, acts[n])
                  for j, n in enumerate(names)]
        gens += self.fused(parts, b["mix"], b["proj"], a + "proj", x_ts=6 * C, y_ts=pts)
        gens += self.matmul([pad_end(mat(w[a + n + "2"]), w[a + n + "2"].shape[0], dp) for n in names], b["proj"], b["l2"], a + "lora2", x_off=3 * C, x_ts=pts, x_gs=dp,
                            y_ts=len(names) * C)
        gens.append(self.op("wkv7", [b["meta"], b["proj"], b["l2"], self.vec_bind(i), self.state_bind(i),
                                     b["vfirst"], b["y"]],
                            lambda s: (info.n_head, s[1], 1), C=C, WG=info.head_size, NL=len(names), SLOT=self.slot, PTS=pts,
                            KV=2 * C, W0=self.vo["att.w0"],
                            **state_code(info.head_size, self.k.tuning.wkv_unroll, LOAD="@S = state[sb + @J * HS];",
                                         STORE="state[sb + @J * HS] = @S;", SA="sa -= @S * skk[@J];",
                                         UPD="@S = @S * sw[@J] + sk[@J] * v + sa * sab[@J]; acc += sr[@J] * @S;"),
                            A0=self.vo["att.a0"], V0=self.vo["att.v0"],
                            KK=self.vo["att.k_k"], KA=self.vo["att.k_a"], RK=self.vo["att.r_k"],
                            LAYER0=int(i == 0), LNXW=self.vo["att.ln_x.weight"], LNXB=self.vo["att.ln_x.bias"],
                            EPS="64e-5"))
        return gens + self._out(i)

    def lora_dim(self) -> int:
        d = max(self.info.dims.values()) if self.info.dims else 8
        return -(-d // 8) * 8


def activation_sizes(info: Any, rows: int) -> dict[str, int]:
    """Float counts of each activation buffer for `rows` tokens per step."""
    C, F, v = info.n_embd, info.dim_ffn, info.version
    dims = info.dims or {}
    dp = -(-max(dims.values() or [8]) // 8) * 8
    nmix = {"v4": 3, "v5": 4, "v6": 3, "v7": 6}[v]
    return {
        "x": rows * C, "mix": rows * nmix * C, "proj": rows * (4 * C + 4 * dp), "y": rows * C, "hid": rows * (F + C),
        "dd": rows * C if v == "v6" else 4, "mix2": rows * 5 * C if v == "v6" else 4,
        "h": rows * 5 * dp if v == "v6" else 4, "l2": rows * 4 * C if v == "v7" else 4,
        "hd": rows * dp if v == "v6" else 4, "vfirst": rows * C if v == "v7" else 4, "xo": rows * C,
    }
