"""Where a step's GPU time goes, by kernel (bench/kernel_times.py natively; the JS API's kernelTimes() in a
browser): a decode step of B slots, or a prefill chunk, is split by the kernel each dispatch runs (gemv by its
K, gemm, wkv7, mix, sample, ...), and each kernel's dispatches alone are run for many steps, in the step's
order and on the step's buffers, so the weights stream from memory as in the real step (one dispatch
repeated on its own would find its matrix in the GPU's cache). The whole step is timed the same way; what
the kernels' sum lacks against it is the time the GPU overlaps between kernels. A kernel run alone computes
on whatever the buffers hold: its time is right, the numbers it writes are not, so the slots' states are
garbage afterwards (reset them before generating again)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any


def kernel_names(rt: Any) -> dict[int, str]:
    """id(pipeline) -> its kernel's name (the shader file; a GEMV's with its K)."""
    out = {}
    for key, pipe in rt.dev.pipeline_cache.items():
        out[id(pipe)] = f"{key[0]} K={dict(key[1])['K']}" if key[0] == "gemv" else key[0]
    return out


async def decode_ops(rt: Any, batch: int) -> list:
    """The dispatches of one decode step of `batch` slots, the token picked on the GPU (T 0.8, top-p 0.9)."""
    from .sampling import Sampler, SamplerParams

    dec = rt.decoder
    for s in range(batch):
        dec.configure(s, Sampler(SamplerParams(temperature=0.8, top_p=0.9, seed=1), s))
    await dec.read_async(dec.submit({s: 1 for s in range(batch)}, 4))  # its kernels and bindings made
    key, _, _ = rt.write_step([(s, [1], True) for s in range(batch)])  # the shape of the step submit ran
    return [op for part in dec.step_ops(key) for op in part]


async def chunk_ops(rt: Any, n: int) -> list:
    """The dispatches of a prefill chunk of n tokens of slot 0 (no output row)."""
    key, _, _ = rt.write_step([(0, list(range(1, n + 1)), False)], outs=False)
    ops = [op for part in rt.parts(key) for op in part]
    rt.dev.encode(ops)  # compiles its kernels
    await rt.dev.sync_async()
    return ops


async def _seconds(dev: Any, ops: list, steps: int) -> float:
    """Seconds a step of `ops`, run `steps` times in a row (one submit a step), the best of three."""
    best = float("inf")
    for _ in range(3):
        dev.encode(ops)
        await dev.sync_async()
        t0 = time.perf_counter()
        for _ in range(steps):
            dev.encode(ops)
        await dev.sync_async()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


async def measure(rt: Any, batch: int = 1, steps: int = 200, prefill: int = 0) -> dict:
    """{"what", "dispatches", "step_us", "sum_us", "kernels": {name: {"dispatches", "us"}}} for a decode step
    of `batch` slots, or with `prefill`, a prefill chunk of that many tokens."""
    if prefill:
        ops, what = await chunk_ops(rt, min(prefill, rt.k.max_rows)), f"prefill {min(prefill, rt.k.max_rows)}"
    else:
        ops, what = await decode_ops(rt, batch), f"B={batch}"
    names = kernel_names(rt)
    groups: dict[str, list] = defaultdict(list)
    for op in ops:
        groups[names.get(id(op[0]), "?")].append(op)
    out: dict[str, Any] = {"what": what, "dispatches": len(ops),
                           "step_us": round(await _seconds(rt.dev, ops, steps) * 1e6, 1), "kernels": {}}
    for name in sorted(groups):
        t = await _seconds(rt.dev, groups[name], steps)
        out["kernels"][name] = {"dispatches": len(groups[name]), "us": round(t * 1e6, 1)}
    out["sum_us"] = round(sum(k["us"] for k in out["kernels"].values()), 1)
    return out


def table(rows: list[dict]) -> str:
    """The rows of measure() side by side: µs a step (dispatches) of each kernel."""
    names = sorted({n for r in rows for n in r["kernels"]})
    lines = ["kernel".ljust(12) + "".join(f"{r['what']}: µs (n)".rjust(22) for r in rows)]
    for n in names:
        cells = [r["kernels"].get(n) for r in rows]
        lines.append(n.ljust(12) + "".join((f"{c['us']:.1f} ({c['dispatches']})" if c else "-").rjust(22)
                                           for c in cells))
    lines.append("sum".ljust(12) + "".join(f"{r['sum_us']:.1f}".rjust(22) for r in rows))
    lines.append("step".ljust(12) + "".join(f"{r['step_us']:.1f} ({r['dispatches']})".rjust(22) for r in rows))
    return "\n".join(lines)
