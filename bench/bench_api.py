"""Load generator for `webrwkv serve --api`: N concurrent clients stream completions; prints the aggregate
generated tok/s, time to first token and per-stream speed, for each N given.

    .venv/bin/python bench/bench_api.py --clients 1,2,4,8 --slots 8 --max-tokens 64
    .venv/bin/python bench/bench_api.py --url http://127.0.0.1:8000 --clients 8   # a running server

Without --url it loads the model (default: the bundled one) and serves it in this process on a free port.
Every request streams with usage included, so token counts are the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "py"))

PROMPTS = ["ROMEO.\nBut soft, what light", "KING HENRY.\nOnce more unto", "HAMLET.\nTo be, or not",
           "JULIET.\nGood night, good night", "MACBETH.\nIs this a dagger", "PORTIA.\nThe quality of mercy",
           "PUCK.\nIf we shadows have", "PROSPERO.\nOur revels now are"]


async def one(session: aiohttp.ClientSession, url: str, i: int, max_tokens: int) -> dict:
    body = {"model": "bench", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "stream": True,
            "temperature": 1.0, "top_p": 0.9, "seed": i, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, usage = None, None
    async with session.post(url + "/v1/completions", json=body) as r:
        if r.status != 200:
            raise SystemExit(f"HTTP {r.status}: {await r.text()}")
        async for line in r.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text") and first is None:
                first = time.perf_counter() - t0
            usage = chunk.get("usage") or usage
    total = time.perf_counter() - t0
    n = usage["completion_tokens"] if usage else 0
    return {"ttft": first or total, "total": total, "tokens": n,
            "stream_tps": (n - 1) / (total - first) if first and n > 1 and total > first else 0.0}


async def round_(url: str, clients: int, per_client: int, max_tokens: int) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        async def client(c: int) -> list[dict]:
            return [await one(session, url, c * per_client + k, max_tokens) for k in range(per_client)]

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client(c) for c in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": wall, "tps": tokens / wall,
            "ttft_median_s": statistics.median(r["ttft"] for r in results),
            "stream_tps_median": statistics.median(r["stream_tps"] for r in results)}


def start_server(args: argparse.Namespace) -> tuple[str, object]:
    from webrwkv.api import ApiServer, prefer_gemv
    from webrwkv.api_schema import Limits
    from webrwkv.engine import load_engine
    from webrwkv.scheduler import Scheduler

    eng = load_engine(args.model, "native", max_batch=args.slots)
    prefer_gemv(eng.runtime, args.slots)
    sch = Scheduler(eng.runtime, eng.tokenizer, max_queue=1024).start()
    srv = ApiServer(sch, eng.tokenizer, "bench", limits=Limits(max_tokens_limit=100000), port=0).start()
    print(f"# {eng.device.adapter_name}; {eng.info.version} L{eng.info.n_layer} C{eng.info.n_embd}, "
          f"{args.slots} slots", file=sys.stderr)
    return srv.url, srv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=None, help="a running server (default: serve --model here)")
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--clients", default="1,2,4,8", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--requests", type=int, default=1, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    url, srv = (args.url.rstrip("/"), None) if args.url else start_server(args)
    asyncio.run(round_(url, 1, 1, 4))  # warm-up: kernels compiled, shapes cached
    rows = []
    for n in (int(x) for x in args.clients.split(",")):
        rows.append(asyncio.run(round_(url, n, args.requests, args.max_tokens)))
        r = rows[-1]
        if not args.json:
            print(f"clients {r['clients']:3d}: {r['tokens']:5d} tokens in {r['wall_s']:7.2f} s = {r['tps']:7.1f} "
                  f"tok/s aggregate; first token {r['ttft_median_s']:.2f} s, {r['stream_tps_median']:.1f} tok/s "
                  "per stream (medians)", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    if srv is not None:
        srv.stop()


if __name__ == "__main__":
    main()
