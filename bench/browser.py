"""`webrwkv bench` in a browser: load, prefill and decode (greedy and sampled, tokens picked on the GPU) through
the JS API in headless Chromium, against `webrwkv serve` on this machine. Prints one JSON object with the
fields of `webrwkv bench --json` (plus boot and kernel times).

Usage: python bench/browser.py --model FILE [--quant int8] [--gpu] [--cache] [--chromium PATH] [--prefill 512]
       [--decode 128] [--tuning k=v,k=v] [--flag=--chromium-flag ...] [--kernel-times [--json]] [--mirror-host HOST]
--gpu adds the flags that give WebGPU a real GPU on Linux (Vulkan through ANGLE, no window surface);
without them Chromium uses its CPU adapter (SwiftShader). The page (web/bench.html) logs one
"@@BENCH {json}" console line per stage; Chromium writes them to stderr, so no driver is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--enable-logging=stderr", "--v=0"]
GPU_FLAGS = ["--use-angle=vulkan", "--enable-features=Vulkan", "--disable-vulkan-surface", "--ignore-gpu-blocklist"]
TAG = "@@BENCH "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, deadline: float) -> None:
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not start on port {port}")


def page_messages(cmd: list[str], timeout: float, final: Callable[[dict], bool]) -> list[dict]:
    """Start Chromium (`cmd`) and collect the page's "@@BENCH {json}" console lines from its stderr, up to the
    first message `final` accepts; past `timeout` seconds the last one is {"error": ...}. Chromium is killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    out, end = [], time.time() + timeout
    try:
        for line in proc.stderr:
            i = line.find(TAG)
            if i >= 0:
                out.append(json.loads(line[i + len(TAG):].split('", source:')[0].replace('\\"', '"')))
                if final(out[-1]):
                    break
            if time.time() > end:
                out.append({"error": f"no result within {timeout:.0f} s"})
                break
    finally:
        proc.kill()
        proc.wait()
    return out


def run(model: Path, quant: str, gpu: bool, chromium: str, prefill: int, decode: int, timeout: float,
        cache: bool = False, tuning: str = "", flags: tuple = (), kernels: bool = False, mirrors: tuple = ()) -> dict:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "py") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, "-m", "webrwkv", "serve", "--port", str(port), "--model-dir",
                               str(model.parent)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp(prefix="webrwkv-bench-")
    try:
        wait_port(port, time.time() + 30)
        query = urllib.parse.urlencode({"model": f"/models/{model.name}", "quant": quant, "prefill": prefill,
                                        "decode": decode, "cache": int(cache), "tuning": tuning,
                                        "kernels": int(kernels),
                                        "mirrors": ",".join(f"http://{h}:{port}/models/{model.name}" for h in mirrors)})
        cmd = [chromium, *FLAGS, *(GPU_FLAGS if gpu else []), *flags, f"--user-data-dir={profile}",
               f"http://127.0.0.1:{port}/bench.html?{query}"]
        stages: dict = {}

        def final(msg: dict) -> bool:
            print(f"[browser] {msg.get('stage')}", file=sys.stderr)
            return msg.get("stage") in ("done", "error")

        for msg in page_messages(cmd, timeout, final):
            stages[msg.get("stage", "error")] = msg
        if "error" in stages:
            raise SystemExit(f"the benchmark page failed: {stages['error']['error']}")
        if "done" not in stages:
            raise SystemExit("Chromium ended before the benchmark did (no WebGPU?)")
        return {**stages["done"]["result"], "adapter_info": stages.get("adapter", {}).get("info")}
    finally:
        server.kill()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--quant", default="none", choices=["none", "int8", "nf4"])
    ap.add_argument("--gpu", action="store_true", help="Chromium flags for a real GPU (Vulkan) on Linux")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--cache", action="store_true",
                    help="the load also fills the page's Cache API copy (a first visit; the profile starts empty)")
    ap.add_argument("--tuning", default=os.environ.get("WEBRWKV_TUNING", ""),
                    help="kernel knobs, k=v,k=v (default: $WEBRWKV_TUNING, as `webrwkv bench` reads it)")
    ap.add_argument("--kernel-times", action="store_true",
                    help="only where a decode step's and a prefill chunk's GPU time goes, by kernel (webrwkv.kernel_times), "
                         "each kernel's dispatches run --decode times")
    ap.add_argument("--json", action="store_true", help="with --kernel-times: JSON, not a table")
    ap.add_argument("--mirror-host", action="append", default=[], metavar="HOST",
                    help="load the model from this host name of the same server too (a mirror), e.g. localhost; "
                         "a browser opens at most 6 connections a host (repeatable)")
    ap.add_argument("--flag", action="append", default=[], metavar="FLAG",
                    help="one more Chromium flag, e.g. --flag=--enable-dawn-features=disable_robustness (repeatable)")
    args = ap.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"--model {args.model} is not a file")
    res = run(args.model.resolve(), args.quant, args.gpu, args.chromium, args.prefill, args.decode, args.timeout,
              args.cache, args.tuning, tuple(args.flag), args.kernel_times, tuple(args.mirror_host))
    if args.kernel_times and not args.json:
        sys.path.insert(0, str(ROOT / "py"))
        from webrwkv.kernel_times import table

        print(table(res["kernel_times"]))
    else:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
