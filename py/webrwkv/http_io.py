"""HTTP plumbing for the range source (urllib): an overall deadline per request, redirects that stay on
http(s) and keep credentials in their origin, and strict parsing of URLs and numeric headers."""

from __future__ import annotations

import functools
import http.client
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .errors import SourceError

# urllib bounds each socket wait, never a whole request: a server trickling a byte every few seconds would
# hold a read forever. Every socket this module makes checks the deadline of the request its thread is
# making before each wait, and waits at most until then.
_clock = threading.local()
CREDENTIALS = ("Authorization", "Proxy-authorization", "Cookie")  # as urllib.request.Request spells them
_NUMBER = re.compile(r"[0-9]{1,19}", re.ASCII)


@contextmanager
def deadline(seconds: float, wait: float) -> Iterator[Callable[[], bool]]:
    """Bound every socket operation of this thread's request to `seconds` in all, `wait` for each;
    yields a function telling whether the deadline has passed."""
    at = _clock.at = time.monotonic() + seconds
    _clock.wait = wait
    try:
        yield lambda: time.monotonic() >= at
    finally:
        _clock.at = None


def _arm(sock: Any) -> None:
    at = getattr(_clock, "at", None)
    if at is None:
        return
    left = at - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request ran past its deadline (the server is too slow)")
    sock.settimeout(min(left, _clock.wait))


class _TimedSocket(socket.socket):
    def recv_into(self, *args: Any) -> int:
        _arm(self)
        return super().recv_into(*args)

    def recv(self, *args: Any) -> bytes:
        _arm(self)
        return super().recv(*args)

    def sendall(self, *args: Any) -> None:
        _arm(self)
        return super().sendall(*args)


def _timed_connection(*args: Any) -> socket.socket:
    raw = socket.create_connection(*args)
    sock = _TimedSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    sock.settimeout(args[1] if len(args) > 1 else None)
    return sock


class _TimedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _timed_connection


class _TimedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_TimedHTTPConnection, req)


@functools.lru_cache(maxsize=1)
def _https_handler_class() -> Any:
    """An HTTPS handler class whose TLS sockets keep the deadline too; None without ssl (e.g. in Pyodide).
    Its TLS context (loading the system's certificates takes ~0.1 s) is made once, at the first https request."""
    try:
        import ssl
    except ImportError:
        return None

    class TimedSSLSocket(ssl.SSLSocket):
        def read(self, *args: Any) -> Any:
            _arm(self)
            return super().read(*args)

        def send(self, *args: Any) -> int:
            _arm(self)
            return super().send(*args)

        def do_handshake(self, *args: Any) -> None:
            _arm(self)
            return super().do_handshake(*args)

    @functools.lru_cache(maxsize=1)
    def context() -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.sslsocket_class = TimedSSLSocket
        return ctx

    class Connection(http.client.HTTPSConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = _timed_connection

    class Handler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(Connection, req, context=context())

    return Handler


def check_url(url: str) -> urllib.parse.SplitResult:
    """The parts of an http(s) URL, or SourceError saying it is malformed (never retried as a network error)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise SourceError(f"{url!r} is not a valid URL ({e}): check it") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == 0:
        raise SourceError(f"{url!r} is not a valid http(s) URL with a host (and a port from 1 to 65535): check it")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise SourceError(f"{url!r} holds spaces or control characters: percent-encode them (%20)")
    return parts


def origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only, and drops credentials on one to another origin, as browsers do."""

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        location = headers.get("Location") or headers.get("URI")
        if location:  # urllib's own parse of a malformed Location raises ValueError
            try:
                check_url(urllib.parse.urljoin(req.full_url, location))
            except ValueError as e:
                raise SourceError(f"{req.full_url}: the server redirected to a malformed URL ({e})") from None
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        target = check_url(newurl)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(target) != origin(urllib.parse.urlsplit(req.full_url)):
            for name in CREDENTIALS:
                new.remove_header(name)
        return new


def opener() -> urllib.request.OpenerDirector:
    """A urllib opener with deadline-aware sockets and the redirect rules above."""
    handlers = [_Redirects(), _TimedHTTPHandler()]
    https = _https_handler_class()
    return urllib.request.build_opener(*handlers, *([https()] if https else []))


def number(text: str | None, what: str, url: str) -> int | None:
    """A header's non-negative decimal value (None when absent), else SourceError."""
    if text is None:
        return None
    if not _NUMBER.fullmatch(text.strip()):
        raise SourceError(f"{url}: the server sent a bad {what} {text[:40]!r}: check the server")
    return int(text.strip())
