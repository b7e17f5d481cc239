"""Every kernel source the runtime builds (GEMV with subgroups, tiled and split-K GEMM, every version's
layers) also compiles in a browser's WebGPU (Chromium's WGSL compiler, stricter than wgpu's)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from gpu_util import GOLDEN, VERSIONS, device, skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")

PAGE = """<!doctype html><script>
window.check = async (srcs) => {
  const ad = await navigator.gpu.requestAdapter();
  const dev = await ad.requestDevice({requiredFeatures: ad.features.has("subgroups") ? ["subgroups"] : []});
  const out = [];
  for (const s of srcs) {
    dev.pushErrorScope("validation");
    const m = dev.createShaderModule({code: s});
    const msgs = (await m.getCompilationInfo()).messages.filter(x => x.type === "error").map(x => x.message);
    dev.createComputePipeline({layout: "auto", compute: {module: m, entryPoint: "main"}});
    const err = await dev.popErrorScope();
    if (err) msgs.push(err.message.slice(0, 300));
    out.push(msgs);
  }
  return out;
};
</script>"""

DRIVER = """
const { chromium } = require(process.argv[2]);
(async () => {
  const b = await chromium.launch({ executablePath: process.argv[3], args: ['--no-sandbox',
    '--enable-unsafe-webgpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'] });
  const p = await b.newPage();
  await p.goto(process.argv[4]);
  const srcs = JSON.parse(require('fs').readFileSync(process.argv[5]));
  console.log(JSON.stringify(await p.evaluate(s => window.check(s), srcs)));
  await b.close();
})().catch(e => { console.error(e); process.exit(1); });
"""


@functools.lru_cache(maxsize=None)
def kernel_sources() -> list[str]:
    """The WGSL of every pipeline built while running each golden model with GEMM prefill, the quantized
    formats and greedy decode, plus split-K."""
    from webrwkv.formats import FP16
    from webrwkv.kernels import Kernels, MatMul, Tuning
    from webrwkv.models import load_weights
    from webrwkv.runtime import Runtime

    dev = device()
    seen: dict[str, None] = {}
    real = dev.pipeline
    dev.pipeline = lambda wgsl, entry="main", constants=None: seen.setdefault(wgsl) or real(wgsl, entry, constants)
    try:
        dev.pipeline_cache.clear()  # rebuild every pipeline so each source is seen
        for v in VERSIONS:
            info, w = load_weights(GOLDEN / f"{v}.st")
            rt = Runtime(dev, info, w, 2, 16, tuning=Tuning(gemv_max_t=1))
            rt.push(0, list(range(20)))
            rt.push(1, [3])
            while rt.pending(0):
                rt.run(all_logits=True)
        from webrwkv.sampling import Sampler, SamplerParams

        for quant in ("none", "int8", "nf4"):  # GEMV for a few tokens, the quantized bodies, the GPU sampler
            rt = Runtime(dev, info, w, 1, 16, quant=quant)
            rt.push(0, list(range(20)))
            while rt.pending(0):
                rt.run()
            rt.push(0, [1, 2, 3])
            rt.run()
            rt.decoder.configure(0, Sampler(SamplerParams(top_p=0.5, top_k=3, seed=1)))
            rt.decoder.read(rt.decoder.submit({0: 1}, 2))
        k = Kernels(dev)
        meta = dev.buffer(64)
        dev.write(meta, 0, np.array([37] + [0] * 15, np.uint32))
        blocks, kp = FP16.upload(dev, np.ones((40, 2048), np.float32), "w")
        mm = MatMul(k, meta, blocks, kp, 1, 40, dev.buffer(4 * 2048 * 37), dev.buffer(4 * 40 * 37), x_ts=2048, y_ts=40, fmt=FP16)
        assert len(mm.ops(37)) == 2  # split over K + reduction
        k.get("softmax", V=256, WG=64)
        from webrwkv.decode import sample_pipeline

        # The workgroup this adapter allows (SwiftShader caps X at 256; a real GPU's 1024-thread variant
        # differs only in the WG constant and is run natively in test_gpu_sampler).
        sample_pipeline(k, 1000, 64)
    finally:
        del dev.pipeline
        dev.pipeline_cache.clear()
    # browsers need the directive wgpu-native rejects
    return [("enable subgroups;\n" + s) if "subgroup" in s else s for s in seen]


def skip_without_chromium() -> Path:
    """The npm playwright package, or skip the test when it or Chromium is missing."""
    playwright = ROOT / "node_modules" / "playwright"
    if not (Path(CHROMIUM).exists() and playwright.is_dir() and shutil.which("node")):
        skip_or_fail("needs Chromium and the npm playwright package (run the project's setup)")
    return playwright


def chromium_errors(tmp_path: Path, srcs: list[str]) -> list[list[str]]:
    """Each WGSL source's compile and pipeline errors in headless Chromium's WebGPU."""
    playwright = skip_without_chromium()
    (tmp_path / "index.html").write_text(PAGE)
    (tmp_path / "srcs.json").write_text(json.dumps(srcs))
    (tmp_path / "driver.js").write_text(DRIVER)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/index.html"
        res = subprocess.run(["node", str(tmp_path / "driver.js"), str(playwright), CHROMIUM, url,
                              str(tmp_path / "srcs.json")], capture_output=True, text=True, timeout=240)
    finally:
        srv.shutdown()
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_in_chromium(tmp_path):
    skip_without_chromium()
    srcs = kernel_sources()
    assert len(srcs) > 25
    errors = chromium_errors(tmp_path, srcs)
    bad = {srcs[i].splitlines()[1 if srcs[i].startswith("enable") else 0][:80]: e for i, e in enumerate(errors) if e}
    assert not bad, bad
