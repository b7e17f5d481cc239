"""bench/browser.py: `webrwkv bench` through the JS API in headless Chromium (here its CPU adapter), on the
bundled model; its JSON has the fields of `webrwkv bench --json` and a load split the way the native one is
counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gpu_util import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
MODEL = ROOT / "models" / "rwkv7-shakespeare.st"


def test_browser_bench_reports_the_native_fields_and_when_the_weights_were_on_the_gpu():
    if not Path(CHROMIUM).exists():
        skip_or_fail("needs Chromium (run the project's setup)")
    if not any((ROOT / "dist").glob("webrwkv-*.whl")) or not (ROOT / "web" / "vendor" / "pyodide").is_dir():
        skip_or_fail("needs the wheel in dist/ and Pyodide in web/vendor/ (run the project's setup)")
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "browser.py"), "--model", str(MODEL), "--chromium",
                          CHROMIUM, "--prefill", "16", "--decode", "8", "--timeout", "240"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(res.stdout)
    assert row["layers"] > 0 and row["weight_bytes"] > 0 and row["quant"] == "none"
    for key in ("pp16_tok_s", "tg8_gpu_greedy_tok_s", "tg8_gpu_sampled_tok_s", "boot_s", "stream_s"):
        assert row[key] > 0, key
    assert set(row["load_phases_s"]) == {"header", "plan", "stream", "finish"}
    # the load's phases add up to it, and the weights were all on the GPU before the kernels' wait and warm-up
    assert abs(sum(row["load_phases_s"].values()) - row["load_s"]) < 0.05 * row["load_s"] + 0.05
    assert 0 < row["kernels_ready_s"] < row["load_s"]
    assert abs(row["weights_s"] + row["kernels_ready_s"] - row["load_s"]) < 1e-6
    assert row["weights_s"] > row["load_phases_s"]["stream"]
