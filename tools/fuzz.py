#!/usr/bin/env python3
"""Run the test suite's fuzzers (tests/fuzz_util.py) for longer: many more cases, any seed, memory
traced in every case, and for the HTTP source slow answers too (each costs seconds).

    .venv/bin/python tools/fuzz.py                       # all three, 50,000 cases each
    .venv/bin/python tools/fuzz.py http --cases 200000 --seed 7 --slow
    .venv/bin/python tools/fuzz.py header --seed 7 --only 1234   # replay one case named by a failure
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fuzz_util  # noqa: E402

LIMITS = {"header": (5.0, 64 << 20), "server": (5.0, 64 << 20), "http": (10.0, 64 << 20)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fuzzers", nargs="*", choices=[[], *LIMITS], default=[], help="header, server, http (default: all)")
    ap.add_argument("--cases", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--only", type=int, default=None, help="run just this case")
    ap.add_argument("--mem-every", type=int, default=1, help="trace memory in every N-th case (1: all)")
    ap.add_argument("--slow", action="store_true", help="HTTP answers may stall past the source's deadline")
    ap.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    args = ap.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.fuzzers or list(LIMITS):
            server = None
            if name == "header":
                case = fuzz_util.header_case
            elif name == "server":
                server = fuzz_util.start_server(Path(tmp))
                case = functools.partial(fuzz_util.server_case, srv=server)
            else:
                server = fuzz_util.start_misbehaving_server()
                case = functools.partial(fuzz_util.http_case, srv=server, slow=args.slow)
            t0 = time.time()
            time_limit, mem_limit = LIMITS[name]
            try:
                report = fuzz_util.run(name, case, args.cases, args.seed, time_limit, mem_limit, args.only,
                                       stop_on_failure=not args.keep_going, mem_every=args.mem_every)
            finally:
                if server is not None:
                    server.shutdown()
                    server.server_close()
            print(f"{name}: {report.cases} cases in {time.time() - t0:.0f} s (seed {args.seed}); slowest "
                  f"{report.slowest:.2f} s, peak {report.peak / 2**20:.1f} MB; "
                  + ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items())))
            for line in report.failures:
                print("FAIL", line)
            failed |= bool(report.failures)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
