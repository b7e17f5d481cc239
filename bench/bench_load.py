"""Load time of a torch.save .pth against the same weights as safetensors: natively (file and local
HTTP) and streamed (the browser's load plan, with its fetches done here by HTTP Range on a local server).

Usage:
  .venv-tools/bin/python bench/bench_load.py prepare [--shape v7:L12:C768] [--workdir DIR]
      (torch: writes fp16.pth / bf16.pth with torch.save and fp16.st / bf16.st with the same tensors)
  .venv/bin/python bench/bench_load.py run [--workdir DIR] [--repeat 5] [--json]
The target (bench/README.md): a .pth load costs at most 10% more than its .st twin's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "py"))
BLOCK = 32 << 20  # web/loader.js BLOCK
PREFIX = 4096  # web/loader.js PREFIX


def prepare(shape: str, workdir: str) -> None:
    """Random weights of a released model's shape in the official layout, as BlinkDL publishes it."""
    import numpy as np
    import torch

    from webrwkv.benchmark import parse_random, random_weights
    from webrwkv.models.loader import to_layout
    from webrwkv.safetensors import write_safetensors

    info = parse_random(shape)
    official = to_layout(info, random_weights(info, 0), "official")
    os.makedirs(workdir, exist_ok=True)
    for dtype, tdtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)).to(tdtype) for k, v in official.items()}
        torch.save(sd, os.path.join(workdir, f"{dtype}.pth"))
        arrays = {k: (t.float().numpy() if dtype == "bf16" else t.numpy()) for k, t in sd.items()}
        write_safetensors(os.path.join(workdir, f"{dtype}.st"), arrays, metadata={"format": "pt"}, dtype=dtype)
    with open(os.path.join(workdir, "shape.txt"), "w") as f:
        f.write(shape)


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process: every thread, lavapipe's and the server's included), result."""
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def native(dev: Any, model: str) -> None:
    """File (or URL) to every weight on the GPU, then one token so every copy has finished."""
    from webrwkv.models import load_weights
    from webrwkv.runtime import Runtime

    rt = Runtime(dev, *load_weights(model, keep_fp16=True))
    rt.push(0, [1])
    rt.run()


def streamed(dev: Any, url: str) -> int:
    """What web/worker.js does, with its fetches done by HTTP Range here: the index (the safetensors header,
    or index_needs rounds for a .pth), the load plan, its 32 MB blocks into the planned buffers, finish."""
    import asyncio

    from webrwkv.browser_index import PIECES, index_needs
    from webrwkv.browser_loader import StreamingLoad
    from webrwkv.sources import HttpRangeSource

    src = HttpRangeSource(url, head_bytes=PREFIX, workers=3)
    prefix = src.read(0, PREFIX)
    if prefix[:4] == b"PK\x03\x04":
        pieces = [(0, prefix)]
        while True:
            blob = PIECES + len(pieces).to_bytes(4, "little") + b"".join(
                o.to_bytes(8, "little") + len(b).to_bytes(8, "little") + b for o, b in pieces)
            want = index_needs(blob, src.size)
            if not want:
                break
            pieces += [(s, d) for (s, _), d in zip(want, src.read_ranges([(s, e - s) for s, e in want]))]
        prefix = blob
    else:
        n = int.from_bytes(prefix[:8], "little")
        prefix = src.read(0, 8 + n)
    ld = StreamingLoad(dev, prefix, src.size, url, None)
    r0 = ld.data_start & ~3
    blocks = sorted({k for a0, a1, *_ in ld.writes for k in range((a0 - r0) // BLOCK, (a1 - 1 - r0) // BLOCK + 1)})
    spans = [(r0 + k * BLOCK, min(src.size, r0 + (k + 1) * BLOCK) - (r0 + k * BLOCK)) for k in blocks]
    data = dict(zip((s for s, _ in spans), src.read_ranges(spans)))
    staging: dict = {}
    for a0, a1, buf, off, tag in ld.writes:
        chunk = b"".join(data[s][max(a0, s) - s: min(a1, s + n) - s] for s, n in spans if s < a1 and a0 < s + n)
        chunk += b"\0" * (a1 - a0 - len(chunk))
        if buf is None:
            buf = staging[tag] = dev.buffer(a1 - a0, label="staging")
        dev.write(buf, off, chunk)
        ld.write_done(tag, staging.pop(tag, None))
    rt, _, _ = asyncio.run(ld.finish())
    rt.push(0, [1])
    rt.run()
    return src.requests


def run(workdir: str, repeat: int, as_json: bool) -> None:
    from webrwkv.gpu import open_device
    from webrwkv.models import load_index
    from webrwkv.server import StaticServer

    dev = open_device("native")
    srv = StaticServer(("127.0.0.1", 0), {"models": workdir})
    srv.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/models/"
    rows = []
    for dtype in ("fp16", "bf16"):
        for how, fn in (("index", lambda m: load_index(os.path.join(workdir, m))),
                        ("native file", lambda m: native(dev, os.path.join(workdir, m))),
                        ("native HTTP", lambda m: native(dev, base + m)),
                        ("streamed", lambda m: streamed(dev, base + m))):
            times: dict[str, list[float]] = {"st": [], "pth": []}
            cpu: dict[str, list[float]] = {"st": [], "pth": []}
            got: dict[str, Any] = {}
            fn(f"{dtype}.st"), fn(f"{dtype}.pth")  # warm-up: page cache, pipelines
            for _ in range(repeat):  # alternate, so drift hits both alike
                for ext in ("st", "pth"):
                    t, c, got[ext] = timed(lambda: fn(f"{dtype}.{ext}"))
                    times[ext].append(t)
                    cpu[ext].append(c)
            st, pth = min(times["st"]), min(times["pth"])  # the best run: the least disturbed by other load
            row = {"dtype": dtype, "how": how, "st_s": st, "pth_s": pth, "ratio": pth / st,
                   "median_ratio": statistics.median(times["pth"]) / statistics.median(times["st"]),
                   "cpu_ratio": min(cpu["pth"]) / min(cpu["st"])}
            if how == "streamed":
                row["requests"] = {"st": got["st"], "pth": got["pth"]}
            rows.append(row)
    srv.shutdown()
    srv.server_close()
    sizes = {f: os.path.getsize(os.path.join(workdir, f)) for f in sorted(os.listdir(workdir)) if "." in f[1:]}
    meta = {"shape": open(os.path.join(workdir, "shape.txt")).read(), "adapter": dev.adapter_name,
            "cpu": platform.processor() or platform.machine(), "repeat": repeat, "sizes": sizes,
            "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True).stdout.strip()}
    if as_json:
        print(json.dumps({**meta, "rows": rows}))
        return
    print(f"{meta['shape']} on {meta['adapter']}, best of {repeat}, commit {meta['commit']}")
    print("| weights | load | .st s | .pth s | .pth / .st | median ratio | CPU-time ratio | requests .st / .pth |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        req = f"{r['requests']['st']} / {r['requests']['pth']}" if "requests" in r else ""
        print(f"| {r['dtype']} | {r['how']} | {r['st_s']:.3f} | {r['pth_s']:.3f} | {r['ratio']:.3f} | "
              f"{r['median_ratio']:.2f} | {r['cpu_ratio']:.2f} | {req} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["prepare", "run"])
    ap.add_argument("--shape", default="v7:L12:C768")
    ap.add_argument("--workdir", default=os.path.join(ROOT, ".dev", "bench-load"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.what == "prepare":
        prepare(args.shape, args.workdir)
    else:
        run(args.workdir, args.repeat, args.json)


if __name__ == "__main__":
    main()
