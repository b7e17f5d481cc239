"""What one dispatch costs, natively and in Chromium: steps of D small dispatches (each its own bind group of 5
storage buffers, each reading what the one before wrote, as a decode step's kernels do), one compute pass and
submit a step, S steps queued back to back, then a wait for the GPU. Prints one JSON line per backend with the
microseconds a dispatch costs, the steps a second and the read-back round trip of one small dispatch.

Usage: python bench/dispatch.py [--dispatches 100] [--steps 400] [--workgroups 8] [--chromium PATH [--gpu]]
Natively it runs on wgpu-native (webrwkv's NativeDevice); with --chromium, the same loop runs as JS in a page of
headless Chromium (--gpu: the flags that give WebGPU a real GPU on Linux, as in bench/browser.py).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "py"))
sys.path.insert(0, str(ROOT / "bench"))

# a decode step's kernels in miniature: four inputs, one output, a chain through `dst` from dispatch to dispatch
KERNEL = """
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> c: array<f32>;
@group(0) @binding(3) var<storage, read> src: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let i = id.x;
  dst[i] = src[i] * a[i] + b[i] - c[i];
}
"""

# the loop runs in a dedicated worker, as the engine's does
WORKER = """
const post = (o) => postMessage(o);
onmessage = async ({ data: { D, S, WG } }) => {
  try {
    let ad = null;  // the GPU process may still be starting: ask again for up to 10 s
    for (let i = 0; i < 40 && !ad; i++) {
      ad = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
      if (!ad) await new Promise((r) => setTimeout(r, 250));
    }
    if (!ad) throw new Error("no WebGPU adapter");
    const dev = await ad.requestDevice();
    const n = WG * 64 * 4, U = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
    const bufs = Array.from({ length: 5 }, () => dev.createBuffer({ size: n, usage: U }));
    const pipe = await dev.createComputePipelineAsync({ layout: "auto",
      compute: { module: dev.createShaderModule({ code: KERNEL }), entryPoint: "main" } });
    const groups = Array.from({ length: D }, (_, i) => dev.createBindGroup({ layout: pipe.getBindGroupLayout(0),
      entries: [0, 1, 2, 3 + (i % 2), 4 - (i % 2)].map((b, j) => ({ binding: j, resource: { buffer: bufs[b] } })) }));
    const step = () => {
      const enc = dev.createCommandEncoder(), pass = enc.beginComputePass();
      pass.setPipeline(pipe);
      for (let i = 0; i < D; i++) { pass.setBindGroup(0, groups[i]); pass.dispatchWorkgroups(WG); }
      pass.end();
      dev.queue.submit([enc.finish()]);
    };
    const run = async (steps) => {
      const t0 = performance.now();
      for (let k = 0; k < steps; k++) step();
      const t1 = performance.now();
      await dev.queue.onSubmittedWorkDone();
      return [(performance.now() - t0) / 1000, (t1 - t0) / 1000];
    };
    await run(20);
    const [s, js] = await run(S);
    // one small dispatch, a copy and mapAsync: the read-back round trip (median of 31); `nudge`: empty submits
    // while it is pending, one a task, in case the GPU process notices finished work sooner when it gets commands
    const rb = dev.createBuffer({ size: 256, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const roundTrip = async (nudge) => {
      const ms = [];
      for (let i = 0; i < 31; i++) {
        const enc = dev.createCommandEncoder(), pass = enc.beginComputePass();
        pass.setPipeline(pipe); pass.setBindGroup(0, groups[0]); pass.dispatchWorkgroups(WG); pass.end();
        enc.copyBufferToBuffer(bufs[4], 0, rb, 0, 256);
        const t0 = performance.now();
        dev.queue.submit([enc.finish()]);
        const m = rb.mapAsync(GPUMapMode.READ);
        if (nudge) {
          let done = false;
          m.then(() => { done = true; });
          const ch = new MessageChannel();
          await new Promise((res) => {
            ch.port1.onmessage = () => { if (done) res(); else { dev.queue.submit([]); ch.port2.postMessage(0); } };
            ch.port2.postMessage(0);
          });
        }
        await m;
        ms.push(performance.now() - t0);
        rb.unmap();
      }
      return ms.sort((a, b) => a - b)[15];
    };
    const readback_ms = await roundTrip(false), nudged_readback_ms = await roundTrip(true);
    post({ backend: "chromium", adapter: ad.info.description || ad.info.vendor, dispatches: D, steps: S,
           workgroups: WG, us_per_dispatch: 1e6 * s / (S * D), js_us_per_dispatch: 1e6 * js / (S * D),
           steps_per_s: S / s, readback_ms, nudged_readback_ms });
  } catch (e) { post({ error: String(e && e.stack || e) }); }
};
"""

PAGE = """<!doctype html><meta charset="utf-8"><script>
const q = new URLSearchParams(location.search);
const w = new Worker(URL.createObjectURL(new Blob([WORKER], { type: "text/javascript" })));
w.onmessage = ({ data }) => console.log("@@BENCH " + JSON.stringify(data));
w.postMessage({ D: +q.get("d"), S: +q.get("s"), WG: +q.get("wg") });
</script>"""


def native(d: int, s: int, wg: int) -> dict:
    import numpy as np

    from webrwkv.gpu import native as nat

    dev = nat.NativeDevice()
    bufs = [dev.buffer(wg * 64 * 4) for _ in range(5)]
    for b in bufs:
        dev.write(b, 0, np.ones(wg * 64, np.float32))
    pipe = dev.pipeline(KERNEL)
    ops = [(pipe, dev.bind(pipe, [bufs[b] for b in (0, 1, 2, 3 + i % 2, 4 - i % 2)]), (wg, 1, 1)) for i in range(d)]

    def run(steps: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        dev.encode_repeat([ops], steps, 1)
        t1 = time.perf_counter()
        dev.sync()
        return time.perf_counter() - t0, t1 - t0

    run(20)
    sec, rec = run(s)
    trips = []
    for _ in range(31):  # the read-back round trip of one small dispatch, as the page measures it
        t0 = time.perf_counter()
        dev.encode(ops[:1])
        dev.read(bufs[4], 0, 256)
        trips.append(1e3 * (time.perf_counter() - t0))
    return {"backend": "native", "adapter": dev.adapter_name, "dispatches": d, "steps": s, "workgroups": wg,
            "us_per_dispatch": 1e6 * sec / (s * d), "js_us_per_dispatch": 1e6 * rec / (s * d), "steps_per_s": s / sec,
            "readback_ms": sorted(trips)[15]}


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no request log on stderr
        pass


def chromium(path: str, gpu: bool, d: int, s: int, wg: int, timeout: float = 120) -> dict:
    from browser import FLAGS, GPU_FLAGS, page_messages

    with tempfile.TemporaryDirectory(prefix="webrwkv-dispatch-") as tmp:
        (Path(tmp) / "index.html").write_text(PAGE.replace("WORKER", json.dumps(WORKER.replace("KERNEL", json.dumps(KERNEL)))))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=tmp))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{srv.server_address[1]}/index.html?d={d}&s={s}&wg={wg}"
        cmd = [path, *FLAGS, *(GPU_FLAGS if gpu else []), f"--user-data-dir={tmp}/profile", url]
        try:
            msgs = page_messages(cmd, timeout, lambda m: True)
        finally:
            srv.shutdown()
    if not msgs:
        raise SystemExit("Chromium ended before the page reported (no WebGPU?)")
    if "error" in msgs[-1]:
        raise SystemExit(f"the page failed: {msgs[-1]['error']}")
    return msgs[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dispatches", type=int, default=100)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--workgroups", type=int, default=8)
    ap.add_argument("--chromium", help="also run it in this Chromium")
    ap.add_argument("--gpu", action="store_true", help="Chromium's flags for a real GPU")
    a = ap.parse_args()
    print(json.dumps(native(a.dispatches, a.steps, a.workgroups)))
    if a.chromium:
        print(json.dumps(chromium(a.chromium, a.gpu, a.dispatches, a.steps, a.workgroups)))


if __name__ == "__main__":
    main()
