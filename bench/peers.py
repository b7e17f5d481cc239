"""Side-by-side speed of webrwkv (native) and its peers, web-rwkv-py and the official `rwkv` package,
on random-weight models of real shapes. Every engine runs in its own process on the same weights.

Usage: python bench/peers.py [--shapes v6:L12:C768,v7:L24:C2048] [--peers webrwkv,web-rwkv-py,rwkv]
       [--prefill 512] [--decode 128] [--out DIR] [--workdir DIR] [--deadline SECONDS]
See bench/README.md for the set-up of each peer.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "py"))

SHAPES = "v6:L12:C768,v7:L12:C768,v6:L24:C2048,v7:L24:C2048,v6:L32:C2560,v7:L32:C2560"
PEERS = ("webrwkv", "web-rwkv-py", "rwkv")
VERSIONS = {"webrwkv": "v4 v5 v6 v7", "web-rwkv-py": "v4 v5 v6", "rwkv": "v4 v5 v6 v7"}
ENGINE = {"webrwkv": "webrwkv native (wgpu)", "web-rwkv-py": "web-rwkv-py 0.2.3 (web-rwkv 0.8.14)",
          "rwkv": "rwkv 0.8.32 (torch)"}
TAG = "@@RESULT "


# ---------------------------------------------------------------- workers (one process each)

def make_files(spec: str, workdir: str, pth: bool, seed: int) -> dict:
    """Random canonical weights (webrwkv bench's init scales) -> converted-layout fp16 .st
    (+ an official-layout fp16 .pth for the rwkv package)."""
    import numpy as np

    from webrwkv.benchmark import parse_random, random_weights
    from webrwkv.models.loader import to_layout
    from webrwkv.safetensors import write_safetensors

    t0 = time.perf_counter()
    info = parse_random(spec)
    weights = random_weights(info, seed)
    params = sum(a.size for a in weights.values())
    peak = max(float(np.abs(a).max()) for a in weights.values())
    if not peak < 65504:
        raise ValueError(f"random weights of {spec} reach {peak}, beyond fp16")
    base = os.path.join(workdir, spec.replace(":", "_"))
    write_safetensors(base + ".st", to_layout(info, weights, "converted"),
                      metadata={"format": "pt", "layout": "converted"}, dtype="fp16")
    if pth:
        import torch

        official = to_layout(info, weights, "official")
        weights.clear()
        sd = {k: torch.from_numpy(official.pop(k).astype(np.float16)) for k in list(official)}
        torch.save(sd, base + ".pth")
    return {"params": int(params), "max_abs_weight": peak, "prepare_s": time.perf_counter() - t0}


def engine_webrwkv(spec: str, base: str, chunk: int) -> tuple:
    import numpy as np

    from webrwkv.engine import load_engine

    eng = load_engine(base + ".st", "native", max_batch=1, token_chunk_size=chunk)
    rt = eng.runtime

    def prefill(toks: list[int]) -> Any:
        rt.push(0, toks)
        out: dict = {}
        while 0 not in out:
            out.update(rt.run())
        return out[0]

    def step(tok: int) -> int:
        rt.push(0, [tok])
        return int(np.argmax(rt.run()[0]))

    meta = {"adapter": eng.device.adapter_name, "weight_bytes": rt.weight_bytes}
    return prefill, step, lambda: rt.reset(0), np.asarray, meta


def engine_web_rwkv_py(spec: str, base: str, chunk: int) -> tuple:
    import numpy as np
    import web_rwkv_py

    m = web_rwkv_py.Model(base + ".st")

    def step(tok: int) -> int:
        out = m.run([tok], token_chunk_size=chunk)
        return out.index(max(out))  # logits come back as a Python list

    return lambda toks: m.run(toks, token_chunk_size=chunk), step, m.clear_state, np.asarray, {}


def engine_rwkv(spec: str, base: str, chunk: int, strategy: str) -> tuple:
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    if spec.startswith("v7"):
        os.environ["RWKV_V7_ON"] = "1"
    import torch
    from rwkv.model import RWKV

    model = RWKV(model=base, strategy=strategy)  # the package appends '.pth'
    state: list = [None]
    sync = torch.cuda.synchronize if "cuda" in strategy else (lambda: None)

    def prefill(toks: list[int]) -> Any:
        out, state[0] = model.forward(toks, state[0])
        sync()
        return out

    def step(tok: int) -> int:
        out, state[0] = model.forward([tok], state[0])
        return int(torch.argmax(out))

    def reset() -> None:
        state[0] = None

    meta = {"strategy": strategy, "cuda_kernel": os.environ["RWKV_CUDA_ON"], "torch": torch.__version__}
    return prefill, step, reset, lambda x: x.float().cpu().numpy(), meta


def measure(prefill: Callable, step: Callable, reset: Callable, to_np: Callable, toks: list[int],
            decode: int, repeat: int) -> tuple[dict, Any]:
    """Warm up (one prefill, a few steps), then time prefill and greedy decode; best of `repeat`."""
    import numpy as np

    reset()
    tok = int(np.argmax(to_np(prefill(toks))))
    for _ in range(4):
        tok = step(tok)
    best_p = best_d = 0.0
    for _ in range(repeat):
        reset()
        t0 = time.perf_counter()
        logits = prefill(toks)
        t1 = time.perf_counter()
        logits = np.asarray(to_np(logits), dtype=np.float32).reshape(-1)
        gen = [int(np.argmax(logits))]
        t2 = time.perf_counter()
        for _ in range(decode):
            gen.append(step(gen[-1]))
        t3 = time.perf_counter()
        best_p, best_d = max(best_p, len(toks) / (t1 - t0)), max(best_d, decode / (t3 - t2))
    return {"prefill_tok_s": best_p, "decode_tok_s": best_d, "generated": gen[:17],
            "logits_finite": bool(np.isfinite(logits).all())}, logits


def worker(args: argparse.Namespace) -> dict:
    import numpy as np

    base = os.path.join(args.workdir, args.shape.replace(":", "_"))
    if args.worker == "prepare":
        return make_files(args.shape, args.workdir, args.pth, args.seed)
    t0 = time.perf_counter()
    if args.worker == "webrwkv":
        eng = engine_webrwkv(args.shape, base, args.chunk)
    elif args.worker == "web-rwkv-py":
        eng = engine_web_rwkv_py(args.shape, base, args.chunk)
    else:
        eng = engine_rwkv(args.shape, base, args.chunk, args.strategy)
    load_s = time.perf_counter() - t0
    toks = np.random.default_rng(1).integers(0, 65536, args.prefill).tolist()
    res, logits = measure(*eng[:4], toks, args.decode, args.repeat)
    np.save(f"{base}-{args.worker}.npy", logits)
    return {**res, "load_s": load_s, **eng[4]}


# ---------------------------------------------------------------- orchestration

def run_child(argv: list[str], python: str, timeout: float, log: Any) -> dict:
    """Run one worker; its result or {"error": ...}. Output goes to the log either way."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([python, os.path.abspath(__file__), *argv], capture_output=True, text=True,
                           timeout=max(timeout, 1), stdin=subprocess.DEVNULL)
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, rc = f"timed out after {timeout:.0f} s", None
    log.write(f"\n===== {' '.join(argv)} (rc {rc}, {time.perf_counter() - t0:.1f} s)\n{out}\n{err}\n")
    log.flush()
    for line in out.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    last = [ln for ln in (err or "").strip().splitlines() if ln.strip()]
    return {"error": (last[-1] if last else f"exit code {rc}")[:300]}


def gpu_name() -> str:
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        return q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_commit() -> str:
    try:
        q = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return q.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def compare(rows: list[dict], workdir: str, spec: str) -> None:
    """Each peer's last prefill logits and greedy tokens against webrwkv's (same weights, same tokens)."""
    import numpy as np

    base = os.path.join(workdir, spec.replace(":", "_"))
    ref_row = next((r for r in rows if r["peer"] == "webrwkv" and "error" not in r), None)
    if ref_row is None or not os.path.exists(f"{base}-webrwkv.npy"):
        return
    ref = np.load(f"{base}-webrwkv.npy")
    for r in rows:
        if r["peer"] == "webrwkv" or "error" in r or not os.path.exists(f"{base}-{r['peer']}.npy"):
            continue
        other = np.load(f"{base}-{r['peer']}.npy")
        r["logits_max_abs_diff"] = float(np.abs(other - ref).max())
        r["logits_rel_diff"] = float(np.abs(other - ref).max() / max(float(np.abs(ref).max()), 1e-30))
        same = 0
        for a, b in zip(r["generated"], ref_row["generated"]):
            if a != b:
                break
            same += 1
        r["same_greedy_tokens"] = same


def cell(row: dict | None, key: str) -> str:
    if row is None:
        return "n/a"
    if "error" in row:
        return "failed" if not row["error"].startswith("not ") else "n/a"
    return f"{row[key]:.0f}"


def markdown(report: dict) -> str:
    a, rows = report["args"], report["rows"]
    lines = [f"Date {report['date']}; GPU {report['gpu']}; commit {report['commit']}; "
             f"prefill {a['prefill']} tokens, decode {a['decode']} tokens (greedy), token chunk {a['chunk']}; "
             f"tokens/s, best of {a['repeat']} after warm-up.", "",
             "| model | " + " | ".join(f"{p} prefill / decode" for p in a["peers"]) + " |",
             "|---|" + "---|" * len(a["peers"])]
    for spec in a["shapes"]:
        got = {r["peer"]: r for r in rows if r["shape"] == spec}
        if not got:
            continue
        lines.append(f"| {spec} | " + " | ".join(
            f"{cell(got.get(p), 'prefill_tok_s')} / {cell(got.get(p), 'decode_tok_s')}" for p in a["peers"]) + " |")
    lines += ["", "| model | engine | load s | prefill tok/s | decode tok/s | max abs logit diff vs webrwkv "
              "| same greedy tokens | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['peer']} | | | | | | {r['error'].replace('|', '/')} |")
            continue
        note = r.get("adapter") or r.get("strategy", "")
        diff = f"{r['logits_max_abs_diff']:.3g}" if "logits_max_abs_diff" in r else ""
        lines.append(f"| {r['shape']} | {r['peer']} | {r['load_s']:.1f} | {r['prefill_tok_s']:.1f} | "
                     f"{r['decode_tok_s']:.1f} | {diff} | {r.get('same_greedy_tokens', '')} | {note} |")
    return "\n".join(lines) + "\n"


def save(report: dict, out: str) -> str:
    md = markdown(report)
    with open(os.path.join(out, "peers.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "peers.md"), "w") as f:
        f.write(md)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=SHAPES, help="comma-separated VERSION:L<layers>:C<embd>")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1, help="timed rounds after the warm-up; the best counts")
    ap.add_argument("--chunk", type=int, default=128, help="token chunk size (webrwkv and web-rwkv-py)")
    ap.add_argument("--strategy", default="cuda fp16", help="strategy for the rwkv package")
    ap.add_argument("--python", action="append", default=[], metavar="PEER=EXE",
                    help="interpreter for a peer or for 'prepare' (default: this one)")
    ap.add_argument("--out", default=".", help="folder for peers.json, peers.md and peers.log")
    ap.add_argument("--workdir", default=None, help="folder for the model files (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds allowed to one engine on one model")
    ap.add_argument("--deadline", type=float, default=0, help="stop starting work after this many seconds")
    ap.add_argument("--prep-jobs", type=int, default=3, help="model files written in parallel")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--shape", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pth", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(TAG + json.dumps(worker(args)), flush=True)
        return 0

    t_start = time.monotonic()
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad:
        ap.error(f"unknown peer {bad[0]!r}; choose from {', '.join(PEERS)}")
    from webrwkv.benchmark import parse_random

    infos = {s: parse_random(s) for s in shapes}  # rejects malformed shapes before any work
    pythons = dict(p.split("=", 1) for p in args.python)
    os.makedirs(args.out, exist_ok=True)
    workdir = args.workdir or tempfile.mkdtemp(prefix="webrwkv-peers-")
    os.makedirs(workdir, exist_ok=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "gpu": gpu_name(), "commit": args.commit or git_commit(), "host": platform.node(),
              "python": sys.version.split()[0], "engines": {p: ENGINE[p] for p in peers},
              "args": {"shapes": shapes, "peers": peers, "prefill": args.prefill, "decode": args.decode,
                       "repeat": args.repeat, "chunk": args.chunk, "strategy": args.strategy, "seed": args.seed},
              "prepare": {}, "rows": []}
    common = ["--workdir", workdir, "--prefill", str(args.prefill), "--decode", str(args.decode),
              "--repeat", str(args.repeat), "--chunk", str(args.chunk), "--strategy", args.strategy,
              "--seed", str(args.seed)]
    left = lambda: (args.deadline - (time.monotonic() - t_start)) if args.deadline else args.timeout  # noqa: E731
    log = open(os.path.join(args.out, "peers.log"), "a")
    print(f"GPU {report['gpu']}; model files in {workdir}", flush=True)

    # write every model file first (largest first, a few at a time) so no timing shares the CPU with it
    size = lambda s: infos[s].n_layer * infos[s].n_embd ** 2  # noqa: E731
    with cf.ThreadPoolExecutor(max(1, args.prep_jobs)) as pool:
        futs = {s: pool.submit(run_child, ["--worker", "prepare", "--shape", s, *common]
                               + (["--pth"] if "rwkv" in peers else []),
                               pythons.get("prepare", sys.executable), max(left(), 1), log)
                for s in sorted(shapes, key=size, reverse=True)}
        for s in shapes:
            report["prepare"][s] = futs[s].result()
            print(f"prepared {s}: {report['prepare'][s]}", flush=True)

    for s in shapes:
        rows = []
        for p in peers:
            row: dict = {"shape": s, "peer": p}
            if s.split(":")[0] not in VERSIONS[p].split():
                row["error"] = f"not supported ({p} runs {VERSIONS[p]})"
            elif "error" in report["prepare"][s]:
                row["error"] = "model files failed: " + report["prepare"][s]["error"]
            elif left() < 5:
                row["error"] = "skipped: deadline reached"
            else:
                row.update(run_child(["--worker", p, "--shape", s, *common], pythons.get(p, sys.executable),
                                     min(args.timeout, left()), log))
            rows.append(row)
            shown = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items() if k != "generated"}
            print(shown, flush=True)
        compare(rows, workdir, s)
        report["rows"] += rows
        save(report, args.out)
        for f in os.listdir(workdir):
            if f.startswith(s.replace(":", "_")):
                os.remove(os.path.join(workdir, f))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    log.close()
    print("\n" + save(report, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
