"""Where a decode step's or a prefill chunk's GPU time goes, by kernel, natively (webrwkv.kernel_times says
how; `python bench/browser.py --kernel-times` measures the same in a browser).

Usage: python bench/kernel_times.py --model FILE [--batch 1,8] [--prefill 128] [--quant int8] [--steps 200]
       [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "py"))


async def run(args: argparse.Namespace) -> list[dict]:
    from webrwkv.engine import load_engine
    from webrwkv.kernel_times import measure

    batches = [int(b) for b in args.batch.split(",") if b]
    eng = load_engine(args.model, "native", max_batch=max(batches + [1]), token_chunk_size=128, quant=args.quant)
    rows = [await measure(eng.runtime, b, args.steps) for b in batches]
    if args.prefill:
        rows.append(await measure(eng.runtime, 1, max(10, args.steps // 20), args.prefill))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--quant", default="none", choices=["none", "int8", "nf4"])
    ap.add_argument("--batch", default="1,8", help="slot counts of the decode steps, comma-separated")
    ap.add_argument("--prefill", type=int, default=0, help="also a prefill chunk of this many tokens")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from webrwkv.kernel_times import table

    rows = asyncio.run(run(args))
    print(json.dumps({"model": str(args.model), "quant": args.quant, "rows": rows}) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
