"""Each time-mix kernel (shaders/wkv4, wkv5, wkv7) against the numpy function of its version file that
computes the same thing (models.vN.att_core), on random inputs: two slots, segments of several tokens."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_util import device, rel

from webrwkv.kernels import Kernels
from webrwkv.models import v4, v5, v6, v7
from webrwkv.models.nn import GN_EPS

C, H, SEGS = 128, 2, [(0, 5, 1), (5, 3, 0)]  # (first row, rows, slot): slot 1 first
T = sum(n for _, n, _ in SEGS)
rng = np.random.default_rng(7)


def buf(dev, a):
    a = np.ascontiguousarray(a)
    b = dev.buffer(max(a.nbytes, 4))
    dev.write(b, 0, a)
    return b


def meta(dev):
    m = np.zeros(16, np.uint32)
    m[1] = len(SEGS)
    for s, (r0, n, slot) in enumerate(SEGS):
        m[8 + 4 * s: 11 + 4 * s] = (r0, n, slot)
    return buf(dev, m)


def run(name, entries, groups, **params):
    dev = device()
    pipe = Kernels(dev).get(name, **params)
    dev.encode([(pipe, dev.bind(pipe, entries), (groups, len(SEGS), 1))])


def read(b, shape):
    return np.frombuffer(device().read(b, 0, 4 * int(np.prod(shape))), np.float32).reshape(shape)


def vec_block(named: dict) -> tuple[np.ndarray, dict]:
    """One layer's vector block: the vectors one after the other, and their offsets."""
    return np.concatenate(list(named.values())).astype(np.float32), {n: j * C for j, n in enumerate(named)}


def test_wkv4_kernel_equals_v4_att_core():
    dev = device()
    r, k, v = (rng.standard_normal((T, C)).astype(np.float32) for _ in range(3))
    vecs, off = vec_block({"decay": rng.uniform(-3, 1, C), "first": rng.standard_normal(C)})
    SLOT = 3 * C
    state = rng.standard_normal((2, 3, C)).astype(np.float32)
    state[:, 2] = rng.uniform(-5, 5, (2, C))  # pp: a running maximum
    sb, yb = buf(dev, state), dev.buffer(4 * T * C)
    run("wkv4", [meta(dev), buf(dev, np.stack([r, k, v], 1)), buf(dev, vecs), sb, yb], C // 64, C=C, WG=64, SLOT=SLOT,
        AA=0, PTS=3 * C, DECAY=off["decay"], FIRST=off["first"])
    got_y, got_s = read(yb, (T, C)), read(sb, (2, 3, C))
    for r0, n, slot in SEGS:
        rows = slice(r0, r0 + n)
        y, acc = v4.att_core(r[rows], k[rows], v[rows], vecs[:C], vecs[C:], *state[slot])
        assert rel(got_y[rows], y) < 2e-6 and rel(got_s[slot], np.stack(acc)) < 2e-6


@pytest.mark.parametrize("version", ["v5", "v6"])
def test_wkv5_kernel_equals_v5_att_core(version):
    dev = device()
    N = C // H
    r, k, v, g = (rng.standard_normal((T, C)).astype(np.float32) for _ in range(4))
    dd = (rng.standard_normal((T, C)) * 0.5).astype(np.float32)
    vecs, off = vec_block({"u": rng.standard_normal(C), "decay": rng.uniform(-3, 0, C),
                           "lw": rng.uniform(0.5, 1.5, C), "lb": rng.standard_normal(C) * 0.1})
    S0 = rng.standard_normal((2, H, N, N)).astype(np.float32)
    SLOT = H * N * N + 64
    state = np.zeros((2, SLOT), np.float32)
    state[:, 64:] = S0.reshape(2, -1)
    sb, yb = buf(dev, state), dev.buffer(4 * T * C)
    ddl = int(version == "v6")
    run("wkv5", [meta(dev), buf(dev, np.stack([r, k, v, g], 1)), buf(dev, dd), buf(dev, vecs), sb, yb], H, C=C, WG=N,
        HS=N, SLOT=SLOT, KV=64, PTS=4 * C, FIRST=off["u"], DECAY=off["decay"], DDLERP=ddl, LNXW=off["lw"],
        LNXB=off["lb"], EPS=GN_EPS)
    got_y, got_s = read(yb, (T, C)), read(sb, (2, SLOT))[:, 64:].reshape(2, H, N, N)
    core = v6.att_core if ddl else v5.att_core
    for r0, n, slot in SEGS:
        rows = slice(r0, r0 + n)
        decay = vecs[off["decay"]:][:C] + (dd[rows] if ddl else 0)
        y, S = core(r[rows], k[rows], v[rows], g[rows], decay, vecs[:C], vecs[2 * C:3 * C], vecs[3 * C:], S0[slot], H)
        assert rel(got_y[rows], y) < 2e-6 and rel(got_s[slot], S) < 2e-6


@pytest.mark.parametrize("layer0", [1, 0])
def test_wkv7_kernel_equals_v7_att_core(layer0):
    dev = device()
    N, NL = C // H, 3 if layer0 else 4
    r, k, v = (rng.standard_normal((T, C)).astype(np.float32) for _ in range(3))
    lora = rng.standard_normal((T, NL, C)).astype(np.float32)
    v_first = rng.standard_normal((T, C)).astype(np.float32)
    names = {"w0": rng.uniform(-2, 0, C), "a0": rng.standard_normal(C), "v0": rng.standard_normal(C),
             "k_k": rng.uniform(0.5, 1.5, C), "k_a": rng.uniform(0.5, 1.5, C), "r_k": rng.standard_normal(C) * 0.3,
             "ln_w": rng.uniform(0.5, 1.5, C), "ln_b": rng.standard_normal(C) * 0.1}
    vecs, off = vec_block(names)
    S0 = (rng.standard_normal((2, H, N, N)) * 0.3).astype(np.float32)
    SLOT = H * N * N
    sb, yb, vf = buf(dev, S0.reshape(2, -1)), dev.buffer(4 * T * C), buf(dev, v_first)
    run("wkv7", [meta(dev), buf(dev, np.stack([v, r, k], 1)), buf(dev, lora), buf(dev, vecs), sb, vf, yb], H, C=C, WG=N,
        HS=N, NL=NL, SLOT=SLOT, PTS=3 * C, KV=0, W0=off["w0"], A0=off["a0"], V0=off["v0"], KK=off["k_k"],
        KA=off["k_a"], RK=off["r_k"], LAYER0=layer0, LNXW=off["ln_w"], LNXB=off["ln_b"], EPS=GN_EPS)
    got_y, got_s, got_vf = read(yb, (T, C)), read(sb, (2, H, N, N)), read(vf, (T, C))
    vec = {n: vecs[o: o + C] for n, o in off.items()}
    for r0, n, slot in SEGS:
        rows = slice(r0, r0 + n)
        y, S, vfirst = v7.att_core(r[rows], lora[rows, 0], k[rows], v[rows], lora[rows, 1], lora[rows, 2],
                                   None if layer0 else lora[rows, 3], None if layer0 else v_first[rows], vec,
                                   S0[slot], H)
        assert rel(got_y[rows], y) < 2e-6 and rel(got_s[slot], S) < 2e-6
        assert rel(got_vf[rows], vfirst) == 0.0 if layer0 else True
