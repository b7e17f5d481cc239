"""`webrwkv bench`: prefill and decode speed of a model or of random weights with real shapes."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import numpy as np

from .errors import WebRwkvError
from .models import ModelInfo, model_shapes

FFN = {"v4": 4.0, "v5": 4.0, "v6": 3.5, "v7": 4.0}


def parse_random(spec: str) -> ModelInfo:
    """'v7:L24:C2048' -> ModelInfo of a released-like model (vocab 65536, head size 64)."""
    m = re.fullmatch(r"(v[4-7]):L(\d+):C(\d+)", spec.strip())
    if not m:
        raise WebRwkvError(f"--random {spec!r} is not VERSION:L<layers>:C<embd>, e.g. v7:L24:C2048")
    v, L, C = m.group(1), int(m.group(2)), int(m.group(3))
    if C % 64:
        raise WebRwkvError(f"C={C} must be a multiple of the head size 64")
    H = 1 if v == "v4" else C // 64
    F = int(C * FFN[v]) // 32 * 32
    dims = {}
    if v == "v6":
        dims = {"time_maa": 32 if C < 4096 else 64, "time_decay": 64 if C < 4096 else 128}
    if v == "v7":
        # adapter sizes follow the released models' rule of thumb (multiples of 32, grow ~sqrt(C))
        r32 = lambda x: max(32, int(round(x / 32)) * 32)  # noqa: E731
        dims = {"w": r32(1.8 * C ** 0.5), "a": r32(1.8 * C ** 0.5), "v": r32(1.3 * C ** 0.5),
                "g": r32(0.6 * C ** 0.8)}
    return ModelInfo(v, L, C, H, C // H, 65536, F, dims, "official", "fp16", f"random:{spec}")


def random_weights(info: ModelInfo, seed: int = 0) -> dict[str, np.ndarray]:
    """Small random weights of the model's canonical shapes (values keep activations finite)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in model_shapes(info).items():
        fan_in = shape[-1] if len(shape) > 1 else 1
        if len(shape) == 1:
            base = 1.0 if "ln" in name and name.endswith(".weight") else 0.0
            a = base + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            if any(k in name for k in ("time_mix", "time_maa", ".x_")):
                a = rng.uniform(0.2, 0.8, shape).astype(np.float32)
            if name.endswith("time_decay") or name.endswith("w0"):
                a = rng.uniform(-3, 0, shape).astype(np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.5 / np.sqrt(fan_in))
        out[name] = a
    return out


def _bench(rt: Any, prefill: int, decode: int) -> dict[str, float]:
    from .progress import status

    rng = np.random.default_rng(1)
    toks = rng.integers(0, rt.info.vocab, prefill).tolist()
    # warm-up: compile every pipeline shape used below
    status("bench: compiling the kernels (warm-up run)…")
    for warm in (toks, [1]):
        rt.push(0, warm)
        while not rt.run():
            pass
    rt.reset(0)
    status(f"bench: prefill of {prefill} tokens…")
    t0 = time.perf_counter()
    rt.push(0, toks)
    out = {}
    while 0 not in out:
        out.update(rt.run())
    t1 = time.perf_counter()
    tok = int(np.argmax(out[0]))
    status(f"bench: decoding {decode} tokens…")
    t2 = time.perf_counter()
    for _ in range(decode):
        rt.push(0, [tok])
        tok = int(np.argmax(rt.run()[0]))
    t3 = time.perf_counter()
    # the same greedy decode with the argmax on the GPU: the steps queue without reading logits back
    rt.greedy(0, tok, 1)  # compiles the argmax kernel
    t4 = time.perf_counter()
    rt.greedy(0, tok, decode)
    t5 = time.perf_counter()
    status("")
    return {"prefill_tok_s": prefill / (t1 - t0), "decode_tok_s": decode / (t3 - t2),
            "gpu_greedy_tok_s": decode / (t5 - t4)}


def bench_main(args: Any) -> int:
    """`webrwkv bench (--model M | --random v7:L24:C2048) [--prefill N] [--decode N] [--json]`."""
    from .engine import load_engine
    from .gpu import open_device
    from .runtime import DEFAULT_CHUNK, Runtime

    quant = getattr(args, "quant", "none")
    if args.prefill < 1 or args.decode < 1:
        raise WebRwkvError("--prefill and --decode must be at least 1")
    chunk = getattr(args, "token_chunk_size", DEFAULT_CHUNK)
    if chunk < 1:
        raise WebRwkvError("--token-chunk-size must be at least 1")
    chunk = min(args.prefill, chunk)
    from . import progress
    from .kernels import upload_matrix

    progress.status("bench: opening the GPU…")
    dev = open_device("native", args.adapter)
    load_s = None
    if args.random:
        info = parse_random(args.random)
        progress.status(f"bench: making random weights for {args.random}…")
        weights = random_weights(info)
        progress.status("")
        total = sum(2 * a.size for a in weights.values() if a.ndim == 2)
        with progress.bar(total, "uploading to the GPU") as bar:
            rt = Runtime(dev, info, weights, max_batch=1, token_chunk_size=chunk, quant=quant,
                         upload=progress.counted_upload(upload_matrix, bar))
        del weights
        name = f"random {args.random}"
    else:
        # load time: file -> weights on the GPU, up to the GPU having them all (not opening the device)
        progress.status("")
        t0 = time.perf_counter()
        eng = load_engine(args.model, "native", max_batch=1, token_chunk_size=chunk, quant=quant, device=dev)
        dev.sync()
        load_s = time.perf_counter() - t0
        rt, info, name = eng.runtime, eng.info, str(args.model)
    res = _bench(rt, args.prefill, args.decode)
    row = {"model": name, "version": info.version, "layers": info.n_layer, "embd": info.n_embd,
           "weight_bytes": rt.weight_bytes, "quant": quant, "token_chunk_size": chunk, "adapter": dev.adapter_name,
           "load_s": None if load_s is None else round(load_s, 2),
           f"pp{args.prefill}_tok_s": round(res["prefill_tok_s"], 1),
           f"tg{args.decode}_tok_s": round(res["decode_tok_s"], 1),
           f"tg{args.decode}_gpu_greedy_tok_s": round(res["gpu_greedy_tok_s"], 1)}
    if args.json:
        print(json.dumps(row))
        return 0
    cols = [("model", 24), ("weights", 10), ("load s", 7), (f"pp{args.prefill} t/s", 12),
            (f"tg{args.decode} t/s", 11), ("gpu greedy t/s", 14), ("adapter", 0)]
    vals = [name, f"{rt.weight_bytes / 2**30:.2f} GiB", "-" if load_s is None else f"{load_s:.2f}",
            f"{res['prefill_tok_s']:.1f}", f"{res['decode_tok_s']:.1f}", f"{res['gpu_greedy_tok_s']:.1f}",
            dev.adapter_name]
    print(" | ".join(c.ljust(w) for c, w in cols))
    print("-|-".join("-" * max(w, 8) for _, w in cols))
    print(" | ".join(str(v).ljust(w) for v, (_, w) in zip(vals, cols)))
    return 0
