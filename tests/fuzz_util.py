"""Seeded, bounded fuzzers shared by the test suite (a few thousand cases each) and tools/fuzz.py (long runs).

Each fuzzer makes case i from random.Random(f"{seed}:{i}") alone, so a failure names (seed, i) and
`python tools/fuzz.py NAME --seed S --only I` replays it. Every case must end in an accepted result or in
one of the project's own exceptions, within a time and a memory bound; anything else is a failure.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import struct
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from webrwkv.errors import WebRwkvError

GOLDEN = Path(__file__).parent / "golden"


@dataclass
class Report:
    """What a run did: outcomes by name, the slowest case and the largest peak of traced memory."""

    cases: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    slowest: float = 0.0
    peak: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def run(name: str, case: Callable[[random.Random], str], n: int, seed: int, time_limit: float,
        mem_limit: int, only: int | None = None, stop_on_failure: bool = True, mem_every: int = 1) -> Report:
    """Run cases 0..n-1 (or just `only`) of a fuzzer; `case(rng)` returns an outcome name, raises
    WebRwkvError for a refusal (counted as "refused: <type>") and anything else for a failure. Every case is
    timed; every `mem_every`-th has its memory traced (tracing makes a case several times slower)."""
    report = Report()
    try:
        for i in [only] if only is not None else range(n):
            rng = random.Random(f"{seed}:{i}")
            traced = i % mem_every == 0
            if traced:
                tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            t0 = time.perf_counter()
            problem = ""
            try:
                report.add(case(rng))
            except WebRwkvError as e:
                report.add(f"refused: {type(e).__name__}")
                if len(str(e)) > 1500:
                    problem = f"an error message of {len(str(e))} characters: {str(e)[:200]}..."
            except Exception as e:  # the point of fuzzing: anything but our own exceptions is a bug
                problem = f"{type(e).__name__}: {str(e)[:500]}"
            elapsed = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1] - base if traced else 0
            tracemalloc.stop()
            report.cases += 1
            report.slowest, report.peak = max(report.slowest, elapsed), max(report.peak, peak)
            if elapsed > time_limit:
                problem = problem or f"took {elapsed:.2f} s (limit {time_limit} s)"
            if peak > mem_limit:
                problem = problem or f"used {peak >> 20} MB (limit {mem_limit >> 20} MB)"
            if problem:
                report.failures.append(f"{name} seed {seed} case {i}: {problem}")
                if stop_on_failure:
                    break
    finally:
        tracemalloc.stop()
    return report


# --- the safetensors header and the loader's index ------------------------------------------------------

SEED_FILES = sorted(GOLDEN.glob("*.st"))
_SEEDS: dict[Path, bytes] = {}


def _seed_bytes(path: Path) -> bytes:
    if path not in _SEEDS:
        _SEEDS[path] = path.read_bytes()
    return _SEEDS[path]


def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header_text: bytes, body: bytes) -> bytes:
    return struct.pack("<Q", len(header_text)) + header_text + body


def _odd_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, biased to the ones parsers trip on."""
    pick = rng.randrange(12 if depth < 3 else 8)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**31, 2**32 + 1, 2**53 + 1, 2**63, 2**64 + 7, -(2**63)])
    if pick == 3:
        return rng.choice([0.5, -0.0, 1e308, 3.0])
    if pick == 4:
        return rng.choice(["", "F32", "F16", "BF16", "I8", "U8", "F64", "f32", "\u0000", "x" * rng.randrange(1, 300)])
    if pick == 5:
        return rng.randrange(-5, 70000)
    if pick == 6:
        return [rng.randrange(-2, 10**6) for _ in range(rng.randrange(0, 10))]
    if pick == 7:
        return [0] * rng.randrange(0, 20)
    if pick in (8, 9):
        return [_odd_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["dtype", "shape", "data_offsets", "x", ""]): _odd_value(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


def _odd_layer(rng: random.Random, n_layer: int) -> str:
    return rng.choice([str(n_layer), str(n_layer + rng.randrange(1, 10**6)), "10000000", "9" * rng.randrange(10, 40),
                       "-1", "01", "x", "", " 1", "1e3", "\u0661", str(rng.randrange(0, max(1, n_layer)))])


def _mutate_json(rng: random.Random, header: dict) -> dict:
    names = [k for k in header if k != "__metadata__"]
    n_layer = 1 + max((int(k.split(".")[1]) for k in names if re.match(r"blocks\.\d+\.", k)), default=0)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(10)
        name = rng.choice(names) if names else "t"
        entry = header.get(name)
        if kind == 0 and isinstance(entry, dict):  # one field of one entry becomes anything
            entry[rng.choice(["dtype", "shape", "data_offsets"])] = _odd_value(rng)
        elif kind == 1 and isinstance(entry, dict):  # absurd shapes
            entry["shape"] = rng.choice([
                [rng.randrange(1, 2**62)] * rng.randrange(1, 12), [2] * rng.randrange(9, 20_000), [],
                [0, rng.randrange(10**9)], [-1], [[1]], [1.0], [True], [rng.randrange(1, 300)] * 2])
        elif kind == 2 and isinstance(entry, dict):  # offsets moved, swapped, out of the file
            a, b = (entry.get("data_offsets") or [0, 0]) + [0, 0][: 2 - len(entry.get("data_offsets") or [])]
            delta = rng.choice([1, -1, 2, 4, 10**6, -(10**6), 2**63])
            entry["data_offsets"] = rng.choice([[a + delta, b], [a, b + delta], [b, a], [a + delta, b + delta], [a]])
        elif kind == 3:  # a tensor renamed to an odd layer index or name
            new = re.sub(r"^blocks\.\d+", "blocks." + _odd_layer(rng, n_layer), name) if name.startswith("blocks.") \
                else rng.choice(["blocks.", "blocks..x", "blocks.0", "Emb.Weight", name + ".x", "\u00e9" + name])
            header[new] = header.pop(name, entry)
        elif kind == 4:  # a copy of a tensor in a new (possibly huge) layer
            copy = re.sub(r"^blocks\.\d+", "blocks." + _odd_layer(rng, n_layer), name)
            header[copy] = json.loads(json.dumps(entry))
        elif kind == 5 and names:  # a tensor goes missing
            header.pop(name, None)
        elif kind == 6:
            header["__metadata__"] = _odd_value(rng)
        elif kind == 7:  # many layers of one tiny tensor each
            for i in range(n_layer, n_layer + rng.randrange(1, 5000)):
                header[f"blocks.{i}.att.x"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
        elif kind == 8:
            header[rng.choice(["", "__metadata__x", name + "_", "x" * 5000])] = _odd_value(rng)
        else:  # all entries of one kind of tensor get one odd shape (a consistent but wrong model)
            shape = rng.choice([[1], [64], [1, 64], [0], [64, 0], [3, 64], [64, 1, 1]])
            suffix = name.split(".")[-1]
            for k in names:
                if k.endswith(suffix) and isinstance(header.get(k), dict):
                    header[k]["shape"] = shape
    return header


def header_bytes(rng: random.Random) -> bytes:
    """One mutated model file: byte flips, a cut anywhere, JSON edits, or an odd length prefix."""
    data = _seed_bytes(rng.choice(SEED_FILES))
    n = struct.unpack("<Q", data[:8])[0]
    kind = rng.randrange(6)
    if kind == 0:  # byte flips in the prefix, the header or the first data bytes
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 9)):
            buf[rng.randrange(min(len(buf), 8 + n + 64))] = rng.randrange(256)
        return bytes(buf)
    if kind == 1:  # a cut in every region: the length, the header, its last byte, the data, the last byte
        cut = rng.choice([rng.randrange(0, 9), rng.randrange(8, 8 + n + 1), 8 + n + rng.choice([-1, 0, 1]),
                          rng.randrange(8 + n, len(data) + 1), len(data) - rng.randrange(1, 5)])
        return data[:max(0, cut)]
    if kind == 2:  # the length prefix lies
        value = rng.choice([0, 1, n - 1, n + 1, n + rng.randrange(1, 10**6), 2**63, 2**64 - 1, rng.randrange(2**64)])
        return struct.pack("<Q", value) + data[8:]
    header, body = _split(data)
    if kind == 3:
        text = json.dumps(_mutate_json(rng, header)).encode()
        return _join(text + b" " * rng.randrange(0, 8), body)
    text = json.dumps(header).encode()
    if kind == 4:  # text edits: a number of thousands of digits, deep nesting, bad UTF-8, cut JSON
        edit = rng.randrange(5)
        if edit == 0:
            spans = [m.span() for m in re.finditer(rb"\d+", text)]
            a, b = rng.choice(spans)
            text = text[:a] + b"9" * rng.choice([19, 20, 400, 4301, 6000]) + text[b:]
        elif edit == 1:
            depth = rng.choice([100, 1000, 100_000])
            text = text[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
        elif edit == 2:
            pos = rng.randrange(len(text))
            text = text[:pos] + rng.choice([b"\xff", b"\xc3", b"\x00", b"\\", b'"', b"}"]) + text[pos:]
        elif edit == 3:
            text = text[: rng.randrange(len(text))]
        else:
            text = text.replace(b'"F32"', b'"F16"', 1).replace(b'"F16"', b'"BF16"', rng.randrange(2))
        return _join(text, body)
    return _join(json.dumps(_odd_value(rng)).encode(), body)  # not an object at all


def header_case(rng: random.Random) -> str:
    """Parse and index one mutated file; an accepted one must index only bytes the file holds, and load."""
    from webrwkv.models.loader import index_header, load_weights
    from webrwkv.safetensors import read_header
    from webrwkv.sources import BytesSource

    data = header_bytes(rng)
    src = BytesSource(data, "fuzz.st")
    header = read_header(src)
    for t in header.tensors.values():
        assert header.data_start <= t.start <= t.end <= len(data), t
    info, refs = index_header(header, "fuzz.st")
    assert info.n_layer >= 1 and all(0 <= r.offset and r.offset + r.nbytes <= len(data) for r in refs.values())
    _, weights = load_weights(src)
    assert set(weights) == set(refs)
    return "loaded"


# --- the server's request parsing ---------------------------------------------------------------------

SECRET = b"private: never served"
MODEL = bytes(range(256)) * 4096  # 1 MiB; byte p is p % 256, so any range of it can be checked


def make_site(root: Path) -> dict[str, Path]:
    """A server's roots with files it must serve and files it must not (outside, hidden, not models)."""
    web, dist, models = root / "web", root / "dist", root / "models"
    for d in (web / "sub", dist, models / "Documents"):
        d.mkdir(parents=True, exist_ok=True)
    (root / "secret.txt").write_bytes(SECRET)
    (web / "index.html").write_text("<!doctype html><title>site</title>")
    (web / "sub" / "index.html").write_text("sub")
    (web / ".hidden").write_bytes(SECRET)
    (dist / "webrwkv-0.1.0-py3-none-any.whl").write_bytes(b"PK\3\4")
    (dist / "notes.txt").write_bytes(SECRET)
    (models / "m.st").write_bytes(MODEL)
    (models / "m.vocab.txt").write_bytes(b"1 'a' 1\n")
    (models / "notes.md").write_bytes(SECRET)
    (models / "Documents" / "diary.txt").write_bytes(SECRET)
    link = models / "out.st"
    if not link.exists():
        link.symlink_to(root / "secret.txt")
    return {"": web, "wheels": dist, "models": models}


_PATHS = ["/", "/index.html", "/sub/", "/sub", "/models/m.st", "/models/m.vocab.txt", "/models/index.json",
          "/wheels/index.json", "/wheels/webrwkv-0.1.0-py3-none-any.whl", "/models/notes.md", "/models/out.st",
          "/models/Documents/diary.txt", "/wheels/notes.txt", "/.hidden", "/../secret.txt", "/models/../../secret.txt",
          "/%2e%2e/secret.txt", "/models/%2e%2e%2f%2e%2e%2fsecret.txt", "//etc/passwd", "/models/m.st/",
          "/models//m.st", "/models/m.st%00", "/models/m.st?x=1#y", "*", "http://h/models/m.st", "", "/%ff",
          "/models/M.ST", "/models/m.st.", "/models/./m.st", "/models/m%2est", "/\\..\\secret.txt"]
_METHODS = ["GET", "GET", "GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "get", "TRACE", "CONNECT", "G\x00T", ""]
_VERSIONS = ["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1x", "HTTP/", "", "HTTP/11.1"]


def _odd_number(rng: random.Random) -> str:
    return rng.choice([str(rng.randrange(0, 2 * len(MODEL))), str(rng.randrange(0, 100)), "9" * rng.randrange(19, 6000),
                       "0" * rng.randrange(1, 40) + "5", "-1", "\u00b2", "\u00b9\u00b2", "1e3", " 7 ", "", "0x10",
                       str(len(MODEL)), str(len(MODEL) - 1)])


def _range_value(rng: random.Random) -> str:
    if rng.random() < 0.4:  # a plain range, often reaching past the end
        a = rng.randrange(0, len(MODEL) + 10)
        return rng.choice([f"bytes={a}-{a + rng.randrange(0, 70000)}", f"bytes={a}-", f"bytes=-{a}"])
    a, b = _odd_number(rng), _odd_number(rng)
    return rng.choice([f"bytes={a}-{b}", f"bytes={a}-", f"bytes=-{b}", f"bytes={a}-{b},{b}-{a}", f"BYTES = {a} - {b}",
                       f"items={a}-{b}", f"bytes {a}-{b}", "bytes=-", "bytes=", f"bytes={a}", f"bytes=-{a}-{b}"])


def _header_lines(rng: random.Random, etag: str, wild: bool) -> list[str]:
    other = '"x"'
    date = rng.choice(["Mon, 01 Jan 2001 00:00:00 GMT", "Fri, 01 Jan 2100 00:00:00 GMT", "yesterday", "",
                       "Mon, 99 Foo 2001 99:99:99 GMT", "0", "Thu, 01 Jan 1970 00:00:00 +0000"])
    pool = [
        lambda: f"Range: {_range_value(rng)}",
        lambda: f"Range: {_range_value(rng)}",
        lambda: "If-Range: " + rng.choice([etag, other, date, ""]),
        lambda: "If-Match: " + rng.choice([etag, "*", other, f"{other}, {etag}", "", "W/" + etag]),
        lambda: "If-None-Match: " + rng.choice([etag, "*", other, ""]),
        lambda: f"If-Unmodified-Since: {date}",
        lambda: f"Content-Length: {_odd_number(rng)}",
        lambda: "Transfer-Encoding: chunked",
        lambda: "Expect: 100-continue",
        lambda: f"Connection: {rng.choice(['close', 'keep-alive', 'upgrade', ''])}",
    ]
    junk = [lambda: "Host: " + rng.choice(["", "a" * 70000]), lambda: rng.choice(
        ["no colon here", ": empty name", " folded continuation", "X-\u00ff: \u00e9", "X-A: " + "b" * 70000])]
    lines = ["Host: x"] + [rng.choice(pool)() for _ in range(rng.randrange(0, 5))]
    if wild:
        lines += [rng.choice(junk)() for _ in range(rng.randrange(0, 3))]
        rng.shuffle(lines)
    return lines


def request_bytes(rng: random.Random, etag: str) -> bytes:
    """One request: request line, headers and body drawn from what parsers get wrong; or raw noise. Most
    are well formed but for odd values, so that they reach the Range and file logic."""
    if rng.random() < 0.03:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    wild = rng.random() < 0.35
    path = "/models/m.st" if rng.random() < 0.4 else rng.choice(_PATHS)
    if rng.random() < 0.3:  # a random edit of the path
        pos = rng.randrange(len(path) + 1)
        path = path[:pos] + rng.choice(["%", "%2", "%00", "..", "/", "\\", "%2f", "\u00e9", " ", "?", "#", ";"]) + path[pos:]
    method = rng.choice(_METHODS) if wild else rng.choice(["GET", "GET", "GET", "HEAD", "OPTIONS", "POST"])
    version = rng.choice(_VERSIONS) if wild else "HTTP/1.1"
    line = " ".join(p for p in (method, path, version) if p or rng.random() < 0.5)
    headers = _header_lines(rng, etag, wild)
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64))) if rng.random() < 0.2 else b""
    if rng.random() < 0.1:
        body += b"GET /models/notes.md HTTP/1.1\r\nHost: x\r\n\r\n"  # a smuggled second request
    eol = rng.choice(["\r\n"] * 8 + ["\n", "\r"]) if wild else "\r\n"
    text = line + eol + "".join(h + eol for h in headers) + eol
    return text.encode("utf-8", "surrogateescape") + body


def _responses(data: bytes, to_head: bool) -> list[tuple[int, dict[str, str], bytes]]:
    """Split what the server sent into (status, headers, body) answers, using Content-Length."""
    out: list = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"an answer without the end of its headers: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        m = re.fullmatch(r"HTTP/1\.[01] (\d{3}) .*", lines[0])
        assert m, f"not a status line: {lines[0][:200]!r}"
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        if int(m.group(1)) in (204, 304) or (to_head and not out and (not rest or rest.startswith(b"HTTP/1."))):
            n = 0  # no body (a HEAD refused before its method was read still gets one)
        out.append((int(m.group(1)), headers, rest[:n]))
        data = rest[n:]
    return out


def server_case(rng: random.Random, srv: Any) -> str:
    """Send one request; the answers must be well formed, exact about bytes and never leak a private file."""
    import socket

    etag = srv.etag
    req = request_bytes(rng, etag)
    with socket.create_connection(srv.server_address[:2], timeout=10) as s:
        try:
            s.sendall(req)
            s.shutdown(socket.SHUT_WR)  # all sent: the server sees the end rather than waiting for more
        except OSError:
            pass  # it may close first (e.g. a request line too long)
        got = b""
        try:
            while chunk := s.recv(1 << 20):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert SECRET not in got, "a private file was served"
    head_only = req.split(b" ", 1)[0] == b"HEAD"
    answers = _responses(got, head_only)
    for k, (status, headers, body) in enumerate(answers):
        head_only = head_only and k == 0
        if status == 206:
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", headers.get("content-range", ""))
            assert m, headers
            a, b, total = map(int, m.groups())
            assert a <= b < total and int(headers["content-length"]) == b - a + 1
            if total == len(MODEL) and not head_only:
                assert body == MODEL[a:b + 1], "a range answered with other bytes"
        if status == 200 and headers.get("content-length") == str(len(MODEL)) and not head_only:
            assert body == MODEL
    assert len(answers) <= 3 and not srv.errors, srv.errors[:1]
    return f"HTTP {answers[0][0]}" if answers else "closed"


def start_server(root: Path) -> Any:
    """The project's server over make_site(root), recording any exception that reaches its error handler
    (a traceback in the log once meant a dropped connection)."""
    import sys
    import urllib.request

    from webrwkv.server import StaticServer

    class Recording(StaticServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            exc = sys.exc_info()[1]
            if not isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)):
                self.errors.append(repr(exc))

    srv = Recording(("127.0.0.1", 0), make_site(root))
    srv.errors = []
    srv.start()
    with urllib.request.urlopen(urllib.request.Request(srv.url + "models/m.st", method="HEAD"), timeout=10) as r:
        srv.etag = r.headers["ETag"]
    return srv


# --- the HTTP range source against a misbehaving server -----------------------------------------------

_LM = {"a": "Mon, 01 Jan 2024 00:00:00 GMT", "b": "Mon, 01 Jan 2024 00:00:07 GMT"}


class _FileCase:
    """One fuzz case's file on the misbehaving server: version a, then (from request `flip_at` on) version
    b, each answer honest about which version it is, or broken in one of many ways."""

    def __init__(self, rng: random.Random, slow: bool) -> None:
        size = rng.choice([0, 1, 100, 5000, 70_000, 200_000])
        self.versions = {"a": rng.randbytes(size)}
        b = bytearray(self.versions["a"])
        for _ in range(rng.randrange(1, 4)):
            if b:
                b[rng.randrange(len(b))] ^= 1 + rng.randrange(255)
        self.versions["b"] = bytes(b) if rng.random() < 0.7 else bytes(b) + b"+" * rng.randrange(-3, 4)
        self.etag = rng.choice(["strong", "strong", "weak", "none"])
        self.lm = rng.random() < 0.7 or self.etag == "none" and rng.random() < 0.8
        self.flip_at = rng.choice([None, None, 1, 2, 3])
        self.p_bad = rng.choice([0.0, 0.1, 0.3, 0.6])
        self.seed, self.slow, self.count = rng.random(), slow, 0
        self.lock = threading.Lock()

    def answer(self, path: str, range_header: str | None, if_range: str | None) -> bytes:
        with self.lock:
            k, self.count = self.count, self.count + 1
        rng = random.Random(f"{self.seed}:{k}")
        name = "b" if self.flip_at is not None and k >= self.flip_at else "a"
        data = self.versions[name]
        headers = {"Date": email.utils.formatdate(usegmt=True), "Connection": "close"}
        if self.etag != "none":
            headers["ETag"] = ('W/' if self.etag == "weak" else "") + f'"{name}"'
        if self.lm:
            headers["Last-Modified"] = _LM[name]
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", range_header or "")
        start, stop = (int(m.group(1)), int(m.group(2)) + 1) if m else (0, len(data))
        stop = min(stop, len(data))
        bad = rng.choice(_BAD) if rng.random() < self.p_bad else ""
        if bad == "slow" and not self.slow:
            bad = ""
        if bad == "slow":
            time.sleep(2.5)
        if bad in ("close", "garbage"):
            return b"" if bad == "close" else rng.randbytes(rng.randrange(1, 100))
        if bad == "drop-etag":
            headers.pop("ETag", None)
        if bad == "drop-lm":
            headers.pop("Last-Modified", None)
        if bad == "gzip":
            headers["Content-Encoding"] = "gzip"
        validator = headers.get("ETag") if self.etag == "strong" else headers.get("Last-Modified")
        status, body = 206, data[start:stop]
        if if_range is not None and if_range != validator or bad == "whole":
            status, body = 200, data
        elif start >= len(data):
            status, body = 416, b""
            headers["Content-Range"] = f"bytes */{len(data)}"
        else:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        if bad == "status":
            status, body = rng.choice([404, 403, 410, 412, 416, 500, 503, 429, 408, 301, 302, 307]), b""
            if status in (302, 307):
                headers["Location"] = rng.choice([path + "?hop", "ftp://127.0.0.1/x", "http://[::1", "//", path])
        if bad == "content-range":
            a, b, total = start, stop - 1, len(data)
            headers["Content-Range"] = rng.choice([
                f"bytes {a}-{b}", f"bytes x-{b}/{total}", f"bytes {a + 1}-{b}/{total}", f"bytes {a}-{b + 1}/{total}",
                f"bytes {a}-{b}/{total + 1}", f"bytes {a}-{b}/*", f"bytes */{total}", f"bytes {'9' * 30}-{b}/{total}",
                f"bytes {b}-{a}/{total}", f"bytes {a}-{b}/{total}, bytes 0-1/{total}", f"bits {a}-{b}/{total}"])
        length = str(len(body))
        if bad == "content-length":
            length = rng.choice([None, str(len(body) - 1), str(len(body) + 1), "abc", "-5", "1e3", ""])
        if bad == "truncate" and body:
            body = body[: rng.randrange(len(body))]
        if bad == "extra":
            body = body + rng.randbytes(rng.randrange(1, 50))
        if length is not None:
            headers["Content-Length"] = length
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        return head.encode("latin-1") + body


_BAD = ["status", "content-range", "content-length", "truncate", "extra", "gzip", "drop-etag", "drop-lm",
        "whole", "close", "garbage", "slow"]


def start_misbehaving_server() -> Any:
    """A raw HTTP server: GET /<case>/m.st is answered by cases[<case>] (a _FileCase)."""
    import socketserver

    class Handler(socketserver.StreamRequestHandler):
        timeout = 10

        def handle(self) -> None:
            try:
                line = self.rfile.readline(65537).decode("latin-1")
                headers = {}
                while (h := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                path = line.split(" ")[1] if line.count(" ") >= 2 else "/"
                case = self.server.cases.get(path.split("/")[1] if path.count("/") >= 2 else "")
                if case is None:
                    self.wfile.write(b"HTTP/1.1 404 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                self.wfile.write(case.answer(path, headers.get("range"), headers.get("if-range")))
            except OSError:
                pass

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    srv.daemon_threads, srv.allow_reuse_address, srv.request_queue_size = True, True, 128
    srv.server_bind()
    srv.server_activate()
    srv.cases = {}
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    return srv


def http_case(rng: random.Random, srv: Any, slow: bool = False) -> str:
    """Read random ranges through HttpRangeSource; every byte it returns must be one version's bytes."""
    from webrwkv.sources import HttpRangeSource

    key = f"c{rng.randrange(1 << 62)}"
    case = srv.cases[key] = _FileCase(rng, slow)
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/{key}/m.st"
        src = HttpRangeSource(url, timeout=1.0, deadline=2.0, retries=rng.choice([0, 1, 2]), backoff=0.0,
                              head_bytes=rng.choice([1, 16, 1000, 1 << 16]), max_gap=rng.choice([0, 100, 1 << 20]),
                              max_request=rng.choice([1024, 4096, 1 << 20]), workers=rng.choice([1, 2, 4]))
        reads = []
        for _ in range(rng.randrange(1, 4)):
            ranges = []
            for _ in range(rng.randrange(1, 6)):
                o = rng.randrange(0, src.size + 1)
                ranges.append((o, rng.randrange(0, min(5000, src.size - o) + 1)))
            reads.append((ranges, src.read_ranges(ranges)))
        consistent = [v for v in case.versions.values()
                      if all(got == v[o:o + n] for ranges, gots in reads for (o, n), got in zip(ranges, gots))]
        assert consistent, "bytes that are no version of the file"
        return "bytes right"
    finally:
        del srv.cases[key]
