"""`webrwkv bench`: prefill and decode speed of a model or of random weights with real shapes."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import numpy as np

from .errors import WebRwkvError
from .models import VERSIONS, ModelInfo, model_shapes

def parse_random(spec: str) -> ModelInfo:
    """'v7:L24:C2048' -> ModelInfo of a released-like model (vocab 65536, head size 64)."""
    m = re.fullmatch(r"(v\d+):L(\d+):C(\d+)", spec.strip())
    if not m or m.group(1) not in VERSIONS:
        raise WebRwkvError(f"--random {spec!r} is not VERSION:L<layers>:C<embd> with VERSION one of "
                           f"{', '.join(sorted(VERSIONS))}, e.g. v7:L24:C2048")
    v, L, C = m.group(1), int(m.group(2)), int(m.group(3))
    if C % 64:
        raise WebRwkvError(f"C={C} must be a multiple of the head size 64")
    H, F, dims = VERSIONS[v].released_shapes(C)
    return ModelInfo(v, L, C, H, C // H, 65536, F, dims, "official", "fp16", f"random:{spec}")


POOL = 1 << 22  # random normals per pool; matrices are slices of it from random offsets


def _matrix(rng: np.random.Generator, pools: dict, shape: tuple, scale: float) -> np.ndarray:
    """An fp16 matrix of N(0, scale^2) values copied from a pool at a random offset: drawing each of a
    billion weights afresh would take longer than the benchmark, and the speed does not depend on them."""
    pool = pools.get(scale)
    if pool is None:
        pool = pools[scale] = (pools["normal"] * np.float32(scale)).astype(np.float16)
    n = int(np.prod(shape))
    out = np.empty(n, np.float16)
    pos, src = 0, int(rng.integers(POOL))
    while pos < n:
        k = min(n - pos, POOL - src)
        out[pos: pos + k] = pool[src: src + k]
        pos, src = pos + k, 0
    return out.reshape(shape)


def random_weights(info: ModelInfo, seed: int = 0) -> dict[str, np.ndarray]:
    """Small random weights of the model's canonical shapes (values keep activations finite); matrices
    are fp16, vectors float32."""
    rng = np.random.default_rng(seed)
    pools = {"normal": rng.standard_normal(POOL, dtype=np.float32)}
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
            a = _matrix(rng, pools, shape, 0.5 / np.sqrt(fan_in))
        out[name] = a
    return out


SAMPLED = dict(temperature=0.8, top_p=0.9)  # the sampled decode of the table (a chat's settings)
PREFILL_RUNS = 3
DECODE_RUNS = 3  # GPU decode: the median of three (one run of an L12 model swung by 20 % on an H200)


def _windows(rt: Any, tokens: dict[int, int], steps: int, params: Any, lookahead: int = 32) -> float:
    """Seconds for `steps` decode steps of the slots in `tokens`, the next token picked on the GPU, in
    windows of `lookahead` steps with two in flight (as generation runs them)."""
    from .sampling import Sampler

    dec = rt.decoder
    for s in tokens:
        dec.configure(s, Sampler(params, s))
    t0 = time.perf_counter()
    queue, done = [dec.submit(tokens, min(lookahead, steps))], min(lookahead, steps)
    while queue:
        if done < steps and len(queue) < 2:
            k = min(lookahead, steps - done)
            queue.append(dec.submit(None, k))
            done += k
        dec.read(queue.pop(0))
    return time.perf_counter() - t0


def _bench(rt: Any, prefill: int, decode: int, batch: int = 1) -> dict[str, float]:
    from .sampling import SamplerParams
    from .progress import status

    rng = np.random.default_rng(1)
    toks = rng.integers(0, rt.info.vocab, prefill).tolist()
    greedy, sampled = SamplerParams(temperature=0), SamplerParams(**SAMPLED, seed=1)
    # warm-up: compile every pipeline shape used below
    status("bench: compiling the kernels (warm-up run)…")
    for warm in (toks, [1]):
        rt.push(0, warm)
        while not rt.run():
            pass
    _windows(rt, {0: 1}, 2, sampled)
    if batch > 1:
        _windows(rt, {s: 1 for s in range(batch)}, 2, sampled)
    status(f"bench: prefill of {prefill} tokens…")
    runs = []
    for _ in range(PREFILL_RUNS):  # the median: one prefill is a fraction of a second on a GPU
        rt.reset(0)
        t0 = time.perf_counter()
        rt.push(0, toks)
        out = {}
        while 0 not in out:
            out.update(rt.run())
        runs.append(time.perf_counter() - t0)
    tok = int(np.argmax(out[0]))
    status(f"bench: decoding {decode} tokens…")
    t2 = time.perf_counter()
    for _ in range(decode):  # the logits read back every step and the argmax taken by numpy
        rt.push(0, [tok])
        tok = int(np.argmax(rt.run()[0]))
    t3 = time.perf_counter()
    med = lambda slots, params: float(np.median([_windows(rt, slots, decode, params)  # noqa: E731
                                                 for _ in range(DECODE_RUNS)]))
    res = {"prefill_tok_s": prefill / float(np.median(runs)), "decode_tok_s": decode / (t3 - t2),
           "gpu_greedy_tok_s": decode / med({0: tok}, greedy), "gpu_sampled_tok_s": decode / med({0: tok}, sampled)}
    if batch > 1:
        res["batch_sampled_tok_s"] = batch * decode / med({s: tok for s in range(batch)}, sampled)
    status("")
    return res


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
    batch = getattr(args, "batch", 1)
    if batch < 1:
        raise WebRwkvError("--batch must be at least 1")
    from . import progress
    from .layers import default_upload

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
            rt = Runtime(dev, info, weights, max_batch=batch, token_chunk_size=chunk, quant=quant,
                         upload=progress.counted_upload(default_upload, bar))
        del weights
        name = f"random {args.random}"
    else:
        # load time: file -> weights on the GPU, up to the GPU having them all (not opening the device)
        progress.status("")
        t0 = time.perf_counter()
        eng = load_engine(args.model, "native", max_batch=batch, token_chunk_size=chunk, quant=quant, device=dev)
        dev.sync()
        load_s = time.perf_counter() - t0
        rt, info, name = eng.runtime, eng.info, str(args.model)
    res = _bench(rt, args.prefill, args.decode, batch)
    row = {"model": name, "version": info.version, "layers": info.n_layer, "embd": info.n_embd,
           "weight_bytes": rt.weight_bytes, "quant": quant, "token_chunk_size": chunk, "adapter": dev.adapter_name,
           "load_s": None if load_s is None else round(load_s, 4),
           f"pp{args.prefill}_tok_s": round(res["prefill_tok_s"], 1),
           f"tg{args.decode}_tok_s": round(res["decode_tok_s"], 1),
           f"tg{args.decode}_gpu_greedy_tok_s": round(res["gpu_greedy_tok_s"], 1),
           f"tg{args.decode}_gpu_sampled_tok_s": round(res["gpu_sampled_tok_s"], 1), "batch": batch}
    if batch > 1:
        row[f"tg{args.decode}_batch_sampled_tok_s"] = round(res["batch_sampled_tok_s"], 1)
    if args.json:
        print(json.dumps(row))
        return 0
    cols = [("model", 24), ("weights", 10), ("load s", 7), (f"pp{args.prefill} t/s", 12),
            (f"tg{args.decode} t/s", 11), ("gpu greedy t/s", 14), ("gpu sampled t/s", 15)]
    vals = [name, f"{rt.weight_bytes / 2**30:.2f} GiB", "-" if load_s is None else f"{load_s:.2f}",
            f"{res['prefill_tok_s']:.1f}", f"{res['decode_tok_s']:.1f}", f"{res['gpu_greedy_tok_s']:.1f}",
            f"{res['gpu_sampled_tok_s']:.1f}"]
    if batch > 1:
        cols.append((f"B={batch} sampled t/s", 17))
        vals.append(f"{res['batch_sampled_tok_s']:.1f}")
    cols.append(("adapter", 0))
    vals.append(dev.adapter_name)
    print(" | ".join(c.ljust(w) for c, w in cols))
    print("-|-".join("-" * max(w, 8) for _, w in cols))
    print(" | ".join(str(v).ljust(w) for v, (_, w) in zip(vals, cols)))
    return 0
