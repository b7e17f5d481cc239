"""Byte sources: read ranges of a model from memory, a local file, or an HTTP server
through Range requests (coalesced, retried, never the whole file)."""

from __future__ import annotations

import email.utils
import http.client
import mmap
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Sequence

from . import http_io
from .errors import SourceError


class ByteSource:
    """Random access to the bytes of one file: `size`, `identity`, `read`, `read_ranges`, `close`."""

    name: str = ""
    size: int = 0
    identity: str = ""  # ETag, or size+mtime: changes when the file does

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Read several (offset, length) ranges; results come back in the order asked."""
        return [self.read(o, n) for o, n in ranges]

    def close(self) -> None:
        pass

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise SourceError(
                f"{self.name}: asked for bytes {offset}..{offset + length} but the file has {self.size} bytes: "
                "the file is smaller than its header says (truncated?); download it again"
            )

    def __enter__(self) -> "ByteSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class BytesSource(ByteSource):
    """Bytes already in memory (tests, or a file fetched whole in the browser)."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self._data = memoryview(data).cast("B")
        self.name, self.size = name, len(self._data)
        self.identity = f"{self.size}-{id(data):x}"

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return bytes(self._data[offset : offset + length])


class LocalFileSource(ByteSource):
    """A file on disk, read with positional reads (safe to share between threads)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.name = os.fspath(path)
        try:
            self._f = open(path, "rb")
        except FileNotFoundError:
            raise SourceError(f"no such file: {self.name}: check the path (or pass an http(s):// URL)") from None
        except IsADirectoryError:
            raise SourceError(f"{self.name} is a directory: pass the model file inside it") from None
        except PermissionError:
            raise SourceError(f"cannot read {self.name}: permission denied; check the file's permissions") from None
        st = os.fstat(self._f.fileno())
        self._map: memoryview | None = None
        self.size = st.st_size
        self.identity = f"{st.st_size}-{st.st_mtime_ns}"

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        fd, parts, got = self._f.fileno(), [], 0
        while got < length:
            if hasattr(os, "pread"):
                chunk = os.pread(fd, min(length - got, 1 << 30), offset + got)
            else:  # Windows: no pread
                self._f.seek(offset + got)
                chunk = self._f.read(length - got)
            if not chunk:
                raise SourceError(f"{self.name} got shorter while reading (changed on disk?): load it again")
            parts.append(chunk)
            got += len(chunk)
        self._unchanged()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _unchanged(self) -> None:
        """SourceError if the open file was written since it was opened (a file replaced by a rename keeps
        its old bytes in the open handle, so only writes in place need this)."""
        st = os.fstat(self._f.fileno())
        if f"{st.st_size}-{st.st_mtime_ns}" != self.identity:
            raise SourceError(f"{self.name} changed on disk while it was being read: load it again")

    def view(self, offset: int, length: int) -> memoryview:
        """Bytes [offset, offset + length) without reading them now: a read-only view on the file's memory
        map (the pages are read when used; the map lives as long as any view of it)."""
        self._check(offset, length)
        self._unchanged()
        if length == 0:
            return memoryview(b"")
        if self._map is None:
            try:
                self._map = memoryview(mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ))
            except (OSError, ValueError):  # a file that cannot be mapped: read it instead
                return memoryview(self.read(offset, length))
        view = self._map[offset: offset + length]
        if len(view) != length:
            raise SourceError(f"{self.name} got shorter while reading (changed on disk?): load it again")
        return view

    def close(self) -> None:
        self._map = None  # views handed out keep the map alive; it closes when the last one goes
        self._f.close()


def plan_ranges(
    ranges: Sequence[tuple[int, int]], max_gap: int, max_request: int
) -> list[tuple[int, int, list[int]]]:
    """Group ranges into requests: neighbours whose gap is at most `max_gap` share one request
    while its span stays within `max_request`. Returns (start, stop, [indices]); empty ranges skipped."""
    groups: list[tuple[int, int, list[int]]] = []
    for i in sorted((i for i, (_, n) in enumerate(ranges) if n > 0), key=lambda i: ranges[i][0]):
        o, n = ranges[i]
        if groups:
            start, stop, idx = groups[-1]
            if o - stop <= max_gap and max(stop, o + n) - start <= max_request:
                groups[-1] = (start, max(stop, o + n), idx + [i])
                continue
        groups.append((o, o + n, [i]))
    return groups


class _Retry(Exception):
    """A transient failure: worth another attempt."""


_CONTENT_RANGE = re.compile(r"bytes\s+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})", re.ASCII)


class HttpRangeSource(ByteSource):
    """A file on an HTTP(S) server, read with `Range` requests.

    The first request asks for the first `head_bytes` (this gives the size, the ETag and Last-Modified,
    and the cached prefix usually holds the safetensors header). Later reads fetch only the ranges asked
    for: neighbours closer than `max_gap` share a request of at most `max_request` bytes, up to `workers`
    requests run at once, and each is retried `retries` times with exponential backoff from `backoff`
    seconds. Every later request carries `If-Range` with the first answer's validator and every answer's
    validators are compared with it, so a file changed on the server raises SourceError, never returns
    other bytes. `timeout` bounds each socket wait and `deadline` + bytes / `min_rate` seconds a whole
    request, so a read never hangs, however slowly the server trickles."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        deadline: float = 60.0,
        min_rate: float = 64 << 10,
        retries: int = 3,
        backoff: float = 0.25,
        max_gap: int = 1 << 20,
        max_request: int = 32 << 20,
        head_bytes: int = 64 << 10,
        workers: int = 4,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name = self.url = url
        http_io.check_url(url)
        self.timeout, self.deadline, self.min_rate = timeout, deadline, min_rate
        self.retries, self.backoff = retries, backoff
        self.max_gap, self.max_request, self.workers = max_gap, max_request, workers
        self.headers = dict(headers or {})
        self.requests = 0  # HTTP requests sent so far
        self._lock = threading.Lock()
        self._opener = http_io.opener()
        self._etag: str | None = None
        self._modified: str | None = None
        self._recent = False
        self.size = -1
        self._prefix = self._fetch(0, max(1, head_bytes), first=True)
        if self._etag is None and self._modified and self._recent:
            # Last-Modified has one-second steps: a file written in the same second as this answer could be
            # replaced within that second unseen, so ask again once it is old enough to tell versions apart.
            time.sleep(1.0)
            self._prefix = self._fetch(0, max(1, head_bytes), first=True)

    def read(self, offset: int, length: int) -> bytes:
        return self.read_ranges([(offset, length)])[0]

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        out = [b""] * len(ranges)
        todo, index = [], []  # ranges not in the cached prefix, and where their results go
        for i, (o, n) in enumerate(ranges):
            self._check(o, n)
            if o + n <= len(self._prefix):
                out[i] = self._prefix[o : o + n]
            else:
                todo.append((o, n))
                index.append(i)
        groups = plan_ranges(todo, self.max_gap, self.max_request)
        step = self.max_request
        pieces = [(a, min(stop, a + step)) for start, stop, _ in groups for a in range(start, stop, step)]
        fetched = dict(zip(pieces, self._fetch_all(pieces)))
        for start, stop, idx in groups:
            parts = [fetched[(a, min(stop, a + step))] for a in range(start, stop, step)]
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            if len(idx) == 1 and todo[idx[0]] == (start, stop - start):
                out[index[idx[0]]] = data
                continue
            view = memoryview(data)
            for j in idx:
                o, n = todo[j]
                out[index[j]] = bytes(view[o - start : o - start + n])
        return out

    def close(self) -> None:
        self._prefix = b""

    def _fetch_all(self, pieces: list[tuple[int, int]]) -> list[bytes]:
        """Fetch (start, stop) pieces, up to `workers` at a time."""
        if self.workers <= 1 or len(pieces) <= 1:
            return [self._fetch(a, b) for a, b in pieces]
        with ThreadPoolExecutor(min(self.workers, len(pieces))) as pool:
            return list(pool.map(lambda p: self._fetch(*p), pieces))

    def _fetch(self, start: int, stop: int, first: bool = False) -> bytes:
        """Bytes [start, stop), with retries; the first call learns size and validators."""
        if not first and self._etag is None and self._modified is None:
            raise SourceError(
                f"{self.url}: the server sends neither ETag nor Last-Modified, so webrwkv could not tell if the "
                "file changed between its range requests: serve it with `webrwkv serve` or a server that does")
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            budget = self.deadline + (stop - start) / self.min_rate
            with http_io.deadline(budget, self.timeout) as expired:
                try:
                    return self._attempt(start, stop, first)
                except _Retry as e:
                    last = _Retry(f"no whole answer within the {budget:.3g} s deadline") if expired() else e
        raise SourceError(
            f"{self.url}: reading bytes {start}-{stop - 1} failed after {self.retries + 1} attempts ({last}): "
            "check the network and the server, then try again"
        )

    def _attempt(self, start: int, stop: int, first: bool) -> bytes:
        hdrs = {**self.headers, "Range": f"bytes={start}-{stop - 1}", "Accept-Encoding": "identity"}
        strong_etag = self._etag if self._etag and not self._etag.startswith("W/") else None
        if not first and (strong_etag or self._modified):
            hdrs["If-Range"] = strong_etag or self._modified  # a changed file comes back whole (200): refused
        with self._lock:
            self.requests += 1
        try:
            resp = self._opener.open(urllib.request.Request(self.url, headers=hdrs), timeout=self.timeout)
        except urllib.error.HTTPError as e:
            cr = e.headers.get("Content-Range", "") if e.headers else ""
            e.close()
            if e.code == 416 and first and cr.replace(" ", "") == "bytes*/0":
                self.size, self.identity = 0, "0-empty"
                return b""
            raise self._http_error(e.code) from None
        except http.client.InvalidURL as e:
            raise SourceError(f"{self.url}: the URL is malformed ({e}): check it") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            if isinstance(reason, http.client.InvalidURL):
                raise SourceError(f"{self.url}: the URL is malformed ({reason}): check it") from None
            raise _Retry(reason) from None
        with resp:
            try:
                return self._body(resp, start, stop, first)
            except (OSError, http.client.HTTPException) as e:
                raise _Retry(e) from None

    def _http_error(self, code: int) -> Exception:
        if code in (404, 410):
            return SourceError(f"{self.url}: not found (HTTP {code}): check the URL")
        if code in (401, 403):
            return SourceError(
                f"{self.url}: access denied (HTTP {code}): the file may be private or need a login or token; "
                "check the URL and your access"
            )
        if code in (412, 416):
            return SourceError(f"{self.url}: the server says the file no longer matches (HTTP {code}): "
                               "the file changed on the server while it was being read; load the model again")
        if code == 408 or code == 429 or code >= 500:
            return _Retry(f"HTTP {code}")
        return SourceError(f"{self.url}: the server answered HTTP {code}: check the URL")

    def _learn(self, headers: Any, total: int) -> None:
        """The first answer: the file's size and the validators every later answer must repeat."""
        self.size, self._etag, self._modified = total, headers.get("ETag"), headers.get("Last-Modified")
        self.identity = self._etag or f"{total}-{self._modified or ''}"
        sent, modified = (email.utils.parsedate_tz(headers.get(k) or "") for k in ("Date", "Last-Modified"))
        self._recent = bool(sent and modified and
                            email.utils.mktime_tz(sent) - email.utils.mktime_tz(modified) < 1)

    def _same_file(self, headers: Any, total: int) -> None:
        etag, modified = headers.get("ETag"), headers.get("Last-Modified")
        if (total != self.size or (self._etag is not None and etag != self._etag)
                or (self._modified is not None and modified != self._modified
                    and (modified is not None or self._etag is None))):
            raise SourceError(
                f"{self.url}: the file changed on the server while it was being read (size {self.size} -> "
                f"{total}, ETag {self._etag} -> {etag}, Last-Modified {self._modified} -> {modified}): "
                "load the model again")

    def _body(self, resp: Any, start: int, stop: int, first: bool) -> bytes:
        if resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("identity", ""):
            raise SourceError(f"{self.url}: the server compressed the file, so byte offsets are meaningless; "
                              "serve it without Content-Encoding")
        length = http_io.number(resp.headers.get("Content-Length"), "Content-Length", self.url)
        if resp.status == 200:
            # A tiny file may come whole for the first request; anything else means Range was ignored.
            if first and length is not None and length <= stop - start:
                self._learn(resp.headers, length)
                return self._read_exact(resp, self.size)
            if not first:
                raise SourceError(f"{self.url}: the file changed on the server while it was being read (it "
                                  "answered a range request with the whole file): load the model again")
            raise SourceError(
                f"{self.url}: the server ignored the Range header (it answered 200 with the whole file); "
                "webrwkv reads models in ranges: serve it with `webrwkv serve` or a server that supports Range"
            )
        if resp.status != 206:
            raise SourceError(f"{self.url}: unexpected HTTP {resp.status} to a range request: check the URL")
        cr = resp.headers.get("Content-Range", "")
        m = _CONTENT_RANGE.fullmatch(cr.strip())
        a, b, total = map(int, m.groups()) if m else (0, -1, 0)
        if not m or not a <= b < total:
            raise SourceError(f"{self.url}: the server sent a bad Content-Range {cr[:80]!r}: check the server")
        if first:
            self._learn(resp.headers, total)
        else:
            self._same_file(resp.headers, total)
        if a != start or b != min(stop, total) - 1:
            raise SourceError(f"{self.url}: asked for bytes {start}-{stop - 1} but got {a}-{b}: check the server")
        if length is not None and length != b - a + 1:
            raise SourceError(f"{self.url}: the server sent Content-Length {length} for the {b - a + 1} bytes "
                              f"{a}-{b}: check the server")
        return self._read_exact(resp, b - a + 1)

    def _read_exact(self, resp: Any, n: int) -> bytes:
        buf, got = bytearray(n), 0
        view = memoryview(buf)
        while got < n:
            try:
                k = resp.readinto(view[got : min(n, got + (1 << 20))])
            except (OSError, http.client.HTTPException) as e:
                raise _Retry(f"connection dropped after {got} of {n} bytes: {e}") from None
            if not k:
                raise _Retry(f"connection dropped after {got} of {n} bytes")
            got += k
        return bytes(buf)


def open_source(path_or_url: Any, **http_options: Any) -> ByteSource:
    """A byte source for a local path, a file:// URL or an http(s):// URL (or pass a source through)."""
    if isinstance(path_or_url, ByteSource):
        return path_or_url
    s = os.fspath(path_or_url)
    if s.startswith(("http://", "https://")):
        return HttpRangeSource(s, **http_options)
    if s.startswith("file://"):
        s = urllib.request.url2pathname(urllib.parse.urlparse(s).path)
    return LocalFileSource(s)
