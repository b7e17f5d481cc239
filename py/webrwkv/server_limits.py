"""What one client may cost the static server: a bounded worker pool, a deadline per request,
a send timeout per chunk, and request bodies drained or their connection closed."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

# The limits (docs/ARCHITECTURE.md, "Limits"; `webrwkv serve --help` says them too).
MAX_CONNECTIONS = 64  # connections served at once: a browser opens 6 per server, the loader 4 to 8
MAX_WAITING = 256  # accepted connections waiting for a worker; beyond that, 503 at once
BACKLOG = 128  # connections the kernel holds before they are accepted
REQUEST_DEADLINE = 30.0  # seconds for a request line, headers and body to arrive, idle keep-alive included
SEND_TIMEOUT = 60.0  # seconds a client may take for each 1 MiB chunk of an answer (at least ~17 KB/s)
MAX_BODY = 1 << 20  # a request body up to this is read and dropped; a larger one closes the connection
# From http.server itself: a request line and each header line at most 64 KiB, at most 100 headers.

_NUMBER = re.compile(r"[0-9]{1,18}", re.ASCII)


class _DeadlineReader(io.RawIOBase):
    """The connection's input, each read waiting at most until the handler's deadline: a client that
    sends a byte every few seconds cannot hold a worker longer than REQUEST_DEADLINE."""

    def __init__(self, sock: socket.socket, handler: "LimitedHandler") -> None:
        self._sock, self._handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive within its deadline")
        self._sock.settimeout(left)
        n = self._sock.recv_into(buf)
        self._handler.received += n
        return n


class LimitedHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the limits above; subclasses add the methods."""

    timeout = SEND_TIMEOUT  # for writes; reads follow the request's deadline
    server: "LimitedServer"

    @property
    def request_version(self) -> str:
        return self._version

    @request_version.setter
    def request_version(self, version: str) -> None:
        # HTTP/0.9 answers are bare bodies: no status, no headers, errors indistinguishable from files.
        # No client since the 1990s needs them, so such a request is answered as HTTP/1.0.
        self._version = "HTTP/1.0" if version == "HTTP/0.9" else version

    def setup(self) -> None:
        super().setup()
        plain, self.rfile = self.rfile, io.BufferedReader(_DeadlineReader(self.connection, self), 1 << 16)
        plain.close()
        self.deadline, self.received = time.monotonic() + REQUEST_DEADLINE, 0
        self._unread = False  # a body was left unread: linger before closing

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + REQUEST_DEADLINE
        self.received = 0  # bytes of this request read from the connection
        super().handle_one_request()

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out") and not self.received:
            return  # an idle keep-alive connection closing is no error
        super().log_error(format, *args)

    def handle_expect_100(self) -> bool:
        return True  # no "100 Continue": the answer comes without the body, which is never wanted

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self._drop_body()
        self.connection.settimeout(self.timeout)
        return True

    def _drop_body(self) -> None:
        """Read and drop a small body, so it is never taken for the next request; else close after answering."""
        lengths = self.headers.get_all("Content-Length") or []
        chunked = self.headers.get("Transfer-Encoding") is not None
        if not lengths and not chunked:
            return
        if chunked or len(lengths) > 1 or not _NUMBER.fullmatch(lengths[0].strip()) or int(lengths[0]) > MAX_BODY:
            self.close_connection, self._unread = True, True
            return
        n = int(lengths[0])
        if n and len(self.rfile.read(n)) < n:
            self.close_connection = True

    def end_headers(self) -> None:
        if self.close_connection and self.request_version == "HTTP/1.1":
            self.send_header("Connection", "close")
        super().end_headers()

    def finish(self) -> None:
        super().finish()
        if self._unread:  # closing with input unread would reset the connection before the answer is read
            try:
                self.connection.shutdown(socket.SHUT_WR)
                end = time.monotonic() + 1.0
                while (left := end - time.monotonic()) > 0:
                    self.connection.settimeout(left)
                    if not self.connection.recv(1 << 16):
                        break
            except OSError:
                pass


class LimitedServer(HTTPServer):
    """An HTTP server whose connections are served by at most MAX_CONNECTIONS worker threads."""

    request_queue_size = BACKLOG
    max_connections = MAX_CONNECTIONS
    max_waiting = MAX_WAITING

    def server_activate(self) -> None:
        super().server_activate()
        self._pool = ThreadPoolExecutor(self.max_connections, thread_name_prefix="webrwkv-serve")
        self._room = threading.BoundedSemaphore(self.max_connections + self.max_waiting)
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._room.acquire(blocking=False):
            try:  # full: say so at once rather than queueing without bound
                request.setblocking(False)
                request.send(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._live_lock:
            self._live.add(request)
        future = self._pool.submit(self._serve_one, request, client_address)
        future.add_done_callback(lambda f: f.cancelled() and self._done(request))

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: Any) -> None:
        with self._live_lock:
            if request not in self._live:
                return
            self._live.discard(request)
        self.shutdown_request(request)
        self._room.release()

    def server_close(self) -> None:
        """Stop listening and end every connection now (workers blocked on a client return at once)."""
        super().server_close()
        if not hasattr(self, "_pool"):
            return
        with self._live_lock:
            live = list(self._live)
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
