"""Make the golden test files: tiny random RWKV v4/v5.2/v6/v7/v7 DeepEmbed checkpoints, tuned states and their
logits from the official `rwkv` package (torch, CPU, fp32).

Run with an environment that has torch, rwkv==0.8.32 and safetensors (not the test environment):
    python3 -m venv .venv-tools && .venv-tools/bin/pip install -r tools/requirements-golden.txt
    .venv-tools/bin/python tools/make_golden.py [--out tests/golden]
Each version runs in its own process because v7 (and DeepEmbed) must be enabled before `rwkv` is imported.

Writes, per version X:
  X.st             official layout (BlinkDL names and shapes), fp32
  X-converted.st   converted layout (lowercase, time_maa->time_mix, time_faaaa->time_first,
                   adapters transposed to [out, in]), fp16
  X.npz            logits for the fp32 weights; X-fp16.npz for the fp16-rounded weights
  X-bf16.st        official layout stored as bf16, and X-bf16.npz for the bf16-rounded weights
  X.pth, X-fp16.pth, X-bf16.pth
                   the same weights in the official layout written by torch.save (what BlinkDL
                   publishes): fp32 as a module's state_dict (an OrderedDict with _metadata), fp16 and
                   bf16 as plain dicts; each holds exactly the values of X.st, X-converted.st, X-bf16.st
v7de (DeepEmbed, run with RWKV_DE_VERSION=1) writes only v7de.st, v7de.npz, v7de-converted.st and v7de-fp16.npz:
its per-layer token tables make each file 2-3 MB (how a .pth is read does not depend on the version).
Tuned states: X-state.st (blocks.N.att.time_state, [H, value, key], fp32) for v5, v6 and v7, v6-state.pth (the
same as torch.save writes it), and for v5 / v6 X-state.npz: the package's logits for the fp16-rounded weights
(X-converted.st) with that time_state in the checkpoint (the package has no tuned states for v7).
And pth-views.pth / pth-views.npz: tensors that share storages, start inside them, and are 0-d or
empty, with the values torch gives for them (the reader's fixture for what torch.save writes);
pth-strided.pth (a transposed, non-contiguous view) and pth-legacy.pth (torch's pre-zip format).
Each .npz holds tokens, seq_all [T, V] (one forward over the sequence), seq_last [V],
step [T, V] (one token per call) and the final state as state:<name> in webrwkv's layout.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "py"))

V, C, L, S = 256, 64, 2, 32  # vocab, channels, layers, head size (2 heads)
T = 20
DIMS = {"v6": {"maa": 16, "decay": 32}, "v7": {"w": 16, "a": 16, "v": 8, "g": 32}}
SEEDS = {"v4": 4, "v5": 5, "v6": 6, "v7": 7, "v7de": 8}
DE = 32  # DeepEmbed matrix size (the package's 32 x 32)
TUNED = ("v5", "v6", "v7")  # versions with a tuned-state golden


def make_weights(version: str) -> dict:
    """Random weights in the official layout, scaled so the recurrence is stable and logits vary."""
    import torch

    g = torch.Generator().manual_seed(SEEDS[version])
    H, F = C // S, (C * 7 // 2 if version == "v6" else 4 * C)
    v7 = version in ("v7", "v7de")

    def n(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    def mat(out, inp):  # [out, in]
        return n(out, inp, std=inp ** -0.5)

    w = {"emb.weight": n(V, C), "blocks.0.ln0.weight": 1 + n(C, std=0.1), "blocks.0.ln0.bias": n(C, std=0.1)}
    for i in range(L):
        b, a, f = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        for ln in ("ln1", "ln2"):
            w[b + ln + ".weight"], w[b + ln + ".bias"] = 1 + n(C, std=0.1), n(C, std=0.1)
        if version in ("v4", "v5"):
            for m in ("k", "v", "r") + (("g",) if version == "v5" else ()):
                w[a + "time_mix_" + m] = u(0, 1, 1, 1, C)
            shape = (C,) if version == "v4" else (H, S)
            w[a + "time_decay"] = u(-3, 1, *shape)
            w[a + ("time_first" if version == "v4" else "time_faaaa")] = u(-1, 1, *shape)
        elif version == "v6":
            D, Dw = DIMS["v6"]["maa"], DIMS["v6"]["decay"]
            for m in "xwkvrg":
                w[a + "time_maa_" + m] = u(0, 1, 1, 1, C)
            w[a + "time_maa_w1"] = n(C, 5 * D, std=C ** -0.5)
            w[a + "time_maa_w2"] = n(5, D, C, std=0.3 * D ** -0.5)
            w[a + "time_decay"] = u(-3, 1, 1, 1, C)
            w[a + "time_decay_w1"] = n(C, Dw, std=C ** -0.5)
            w[a + "time_decay_w2"] = n(Dw, C, std=0.3 * Dw ** -0.5)
            w[a + "time_faaaa"] = u(-1, 1, H, S)
        else:
            dims = DIMS["v7"]
            for m in "rwkvag":
                w[a + "x_" + m] = u(0, 1, 1, 1, C)
            w[a + "w0"] = u(-2, 1, 1, 1, C)
            w[a + "a0"] = u(-1, 1, 1, 1, C)
            w[a + "v0"] = u(-1, 1, 1, 1, C)
            for m in "wavg":
                d = dims[m]
                w[a + m + "1"] = n(C, d, std=C ** -0.5)
                w[a + m + "2"] = n(d, C, std=(1.0 if m == "g" else 0.5) * d ** -0.5)
            w[a + "k_k"] = u(0.5, 1.5, 1, 1, C)
            w[a + "k_a"] = u(0.5, 1.5, 1, 1, C)
            w[a + "r_k"] = n(H, S, std=0.5)
        for m in ("key", "value", "receptance", "output") + (("gate",) if version in ("v5", "v6") else ()):
            w[a + m + ".weight"] = mat(C, C)
        if version != "v4":
            w[a + "ln_x.weight"], w[a + "ln_x.bias"] = 1 + n(C, std=0.1), n(C, std=0.1)
        if v7:
            w[f + "x_k"] = u(0, 1, 1, 1, C)
        else:
            mix = "time_maa_" if version == "v6" else "time_mix_"
            w[f + mix + "k"], w[f + mix + "r"] = u(0, 1, 1, 1, C), u(0, 1, 1, 1, C)
            w[f + "receptance.weight"] = mat(C, C)
        w[f + "key.weight"], w[f + "value.weight"] = mat(F, C), mat(C, F)
        if version == "v7de":  # the hidden layer's scale s2 ((s1 x') E) + s0 stays near 1, E ~ 0.14
            w[f + "s_emb.weight"] = n(V, DE * DE, std=0.1)
            w[f + "s_emb_x.weight"] = n(DE * DE, C, std=0.1 * C ** -0.5)
            w[f + "s1"] = n(C, DE, std=C ** -0.5)
            w[f + "s2"] = n(DE, F, std=0.5 * DE ** -0.5)
            w[f + "s0"] = u(0.8, 1.2, F)
    w["ln_out.weight"], w["ln_out.bias"] = 1 + n(C, std=0.1), n(C, std=0.1)
    w["head.weight"] = n(V, C, std=2 * C ** -0.5)
    return w


ADAPTERS = {"time_mix_w1", "time_mix_w2", "time_decay_w1", "time_decay_w2",
            "w1", "w2", "a1", "a2", "g1", "g2", "v1", "v2", "s1", "s2"}


def to_converted(w: dict) -> dict:
    """The converted layout: renamed, lowercase, adapters with their last two axes swapped, fp16."""
    out = {}
    for name, t in w.items():
        name = name.replace("time_faaaa", "time_first").replace("time_maa", "time_mix").lower()
        if name.split(".")[-1] in ADAPTERS:
            t = t.transpose(-1, -2)
        out[name] = t.contiguous().half()
    return out


def run_official(w: dict, tokens: list, version: str, tmp: str) -> dict:
    """Logits and final state from the rwkv package for weights `w` (official layout, fp32)."""
    import torch
    from rwkv.model import RWKV

    base = os.path.join(tmp, f"{version}-model")
    torch.save({k: v.clone() for k, v in w.items()}, base + ".pth")
    kw = {} if version.startswith("v7") else {"verbose": False}
    model = RWKV(model=base, strategy="cpu fp32", **kw)
    with torch.no_grad():
        seq_all, _ = model.forward(list(tokens), None, full_output=True)
        seq_last, _ = model.forward(list(tokens), None)
        state, step = None, []
        for tok in tokens:
            out, state = model.forward([tok], state)
            step.append(out.float().numpy().copy())
    res = {"tokens": np.array(tokens, dtype=np.int64), "seq_all": seq_all.float().numpy(),
           "seq_last": seq_last.float().numpy(), "step": np.stack(step)}
    per = 5 if version == "v4" else 3
    names = (["att_x", "att_aa", "att_bb", "att_pp", "ffn_x"] if version == "v4"
             else ["att_x", "att_kv", "ffn_x"])
    for i in range(L):
        for j, nm in enumerate(names):
            s = state[i * per + j].float()
            if version.startswith("v7") and nm == "att_kv":
                s = s.transpose(1, 2)  # the package keeps [h, value, key]; webrwkv keeps [h, key, value]
            res[f"state:blocks.{i}.{nm}"] = s.contiguous().numpy()
    return res


def state_dict(w: dict, dtype: Any, module: bool) -> dict:
    """The weights as torch.save gets them from a model: an OrderedDict with `_metadata`, or a plain dict."""
    sd = collections.OrderedDict((k, v.to(dtype).contiguous()) for k, v in w.items())
    if not module:
        return dict(sd)
    sd._metadata = collections.OrderedDict({"": {"version": 1}})
    return sd


def write_views(out: Path) -> None:
    """pth-views.pth: storage sharing, offsets, several dtypes and odd shapes, and the values torch reads back."""
    import torch

    g = torch.Generator().manual_seed(11)
    base = torch.randn(6, 8, generator=g)
    half = torch.randn(3, 5, generator=g).half()
    sd = {"base": base, "rows": base[2:5], "row": base[4], "col1": base[:, 3:4].contiguous(), "tail": base.view(-1)[40:],
          "half": half, "half_row": half[1], "bf16": torch.randn(4, 2, generator=g).bfloat16(),
          "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "ids": torch.arange(5), "mask": torch.tensor([True, False])}
    torch.save(sd, out / "pth-views.pth")
    np.savez(out / "pth-views.npz", **{k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in sd.items()})
    torch.save({"emb.weight": base, "head.weight": base.t()}, out / "pth-strided.pth")  # a transposed view
    torch.save({"emb.weight": base}, out / "pth-legacy.pth", _use_new_zipfile_serialization=False)


def tuned_state(version: str) -> dict:
    """A random tuned state: blocks.N.att.time_state [H, S(value), S(key)], as state tuning saves it."""
    import torch

    g = torch.Generator().manual_seed(50 + SEEDS[version])
    return {f"blocks.{i}.att.time_state": torch.randn(C // S, S, S, generator=g) * 0.5 for i in range(L)}


def one_version(version: str, out: Path) -> None:
    import torch
    from webrwkv.safetensors import write_safetensors

    torch.set_num_threads(1)
    w = make_weights(version)
    rng = np.random.default_rng(100 + SEEDS[version])
    tokens = [int(t) for t in rng.integers(0, V, size=T)]
    np_ = lambda d: {k: v.float().numpy() for k, v in d.items()}  # noqa: E731
    full = version != "v7de"  # DeepEmbed's token tables make each file 2-3 MB: the fp32 and fp16 sets only
    w16 = {k: v.half().float() for k, v in w.items()}
    with tempfile.TemporaryDirectory() as tmp:
        write_safetensors(out / f"{version}.st", np_(w), metadata={"format": "pt"}, dtype="fp32")
        np.savez(out / f"{version}.npz", **run_official(w, tokens, version, tmp))
        conv = to_converted(w)
        write_safetensors(out / f"{version}-converted.st", {k: v.numpy() for k, v in conv.items()},
                          metadata={"format": "pt"}, dtype="fp16")
        np.savez(out / f"{version}-fp16.npz", **run_official(w16, tokens, version, tmp))
        if full:
            wbf = {k: v.bfloat16().float() for k, v in w.items()}
            write_safetensors(out / f"{version}-bf16.st", np_(wbf), metadata={"format": "pt"}, dtype="bf16")
            np.savez(out / f"{version}-bf16.npz", **run_official(wbf, tokens, version, tmp))
        if version in TUNED:
            ts = tuned_state(version)
            write_safetensors(out / f"{version}-state.st", np_(ts), metadata={"format": "pt"}, dtype="fp32")
            if version == "v6":
                torch.save(dict(ts), out / f"{version}-state.pth")
            if version != "v7":  # the package reads time_state for v5 / v6 only
                np.savez(out / f"{version}-state.npz", **run_official({**w16, **ts}, tokens, version, tmp))
    if full:
        torch.save(state_dict(w, torch.float32, module=True), out / f"{version}.pth")
        torch.save(state_dict(w, torch.float16, module=False), out / f"{version}-fp16.pth")
        torch.save(state_dict(w, torch.bfloat16, module=False), out / f"{version}-bf16.pth")
    print(f"{version}: wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "golden"))
    ap.add_argument("--version", choices=sorted(SEEDS) + ["views"], default=None, help="one part (internal)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.version:
        write_views(out) if args.version == "views" else one_version(args.version, out)
        return
    for version in sorted(SEEDS) + ["views"]:
        env = dict(os.environ, RWKV_JIT_ON="0", RWKV_CUDA_ON="0", RWKV_V7_ON="1" if version.startswith("v7") else "0",
                   RWKV_DE_VERSION="1" if version == "v7de" else "0")
        subprocess.run([sys.executable, __file__, "--out", str(out), "--version", version], env=env, check=True)


if __name__ == "__main__":
    main()
