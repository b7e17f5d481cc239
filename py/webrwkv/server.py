"""Static server for the chat page, vendored Pyodide, the wheel and models, with HTTP Range,
ETag, conditional requests, CORS and strict path checks (never serves a file outside its roots, and
from the model folder only model files and their sidecars)."""

from __future__ import annotations

import email.utils
import errno
import json
import mimetypes
import os
import re
import socket
import sys
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Mapping

from .errors import WebRwkvError
from .server_limits import LimitedHandler, LimitedServer

REPO_ROOT = Path(__file__).resolve().parents[2]
CHUNK = 1 << 20  # bytes per write when streaming a file
MODEL_EXTS = (".safetensors", ".st", ".pth")  # listed in /models/index.json and served
SERVED_MODEL_EXTS = MODEL_EXTS
SIDECARS = (".vocab.txt", ".card.json", ".json")  # <model stem>.vocab.txt / .card.json / .json next to a model
MODEL_CARD = "MODEL_CARD.md"
MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".wasm": "application/wasm",
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".safetensors": "application/octet-stream",
    ".st": "application/octet-stream",
    ".pth": "application/octet-stream",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, ETag, Accept-Ranges, Last-Modified",
    "Cross-Origin-Resource-Policy": "cross-origin",
}


def default_roots(model_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """URL prefix -> folder: "" is web/, "wheels" is dist/, "models" is the model folder."""
    return {
        "": REPO_ROOT / "web",
        "wheels": REPO_ROOT / "dist",
        "models": Path(model_dir) if model_dir else REPO_ROOT / "models",
    }


def mime_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return MIME.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"


_RANGE = re.compile(r"bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)", re.ASCII | re.IGNORECASE)


def _bound(digits: str) -> int:
    """A Range number; one of more than 18 digits is beyond any file (and int() of 5000 digits fails)."""
    return int(digits) if len(digits.lstrip("0")) <= 18 else 10**18


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """One `bytes=` range -> (start, stop); "unsatisfiable"; or None to ignore (absent, malformed, multi)."""
    m = _RANGE.fullmatch(header.strip()) if header else None
    if not m or m.group(1) == m.group(2) == "":
        return None
    a, b = m.groups()
    if a == "":  # suffix: the last N bytes
        n = _bound(b)
        return (max(0, size - n), size) if n > 0 and size > 0 else "unsatisfiable"
    start = _bound(a)
    stop = size if b == "" else _bound(b) + 1
    if b and stop <= start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(stop, size)


def is_model_file(folder: str, name: str) -> bool:
    """What the model folder serves: model files, MODEL_CARD.md, and a model's <stem>.vocab.txt and
    <stem>.json when that model is there (the folder may be a home directory: nothing else leaves it)."""
    if name.endswith(SERVED_MODEL_EXTS) or name == MODEL_CARD:
        return True
    for ext in SIDECARS:
        if name.endswith(ext) and len(name) > len(ext):
            stem = os.path.join(folder, name[: -len(ext)])
            return any(os.path.isfile(stem + m) for m in SERVED_MODEL_EXTS)
    return False


def _modified_since(header: str | None, mtime: float) -> bool:
    """True when an If-Unmodified-Since date is valid and the file changed after it."""
    try:
        when = email.utils.parsedate_to_datetime(header or "")
    except (TypeError, ValueError, IndexError):
        return False
    return when.tzinfo is not None and int(mtime) > when.timestamp()


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class Handler(LimitedHandler):
    """GET/HEAD/OPTIONS over the server's roots; everything else is refused."""

    protocol_version = "HTTP/1.1"
    server_version = "webrwkv"
    server: "StaticServer"

    # --- request entry points -------------------------------------------------
    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_OPTIONS(self) -> None:
        self.send_response(HTTPStatus.NO_CONTENT)
        self._cors()
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers",
                         "Range, If-None-Match, If-Range, If-Match, If-Unmodified-Since, Content-Type")
        self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _refuse_method(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "only GET, HEAD and OPTIONS", {"Allow": "GET, HEAD, OPTIONS"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    # --- building blocks -------------------------------------------------------
    def _cors(self) -> None:
        for k, v in CORS.items():
            self.send_header(k, v)

    def _error(self, code: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        body = f"{int(code)} {text}\n".encode()
        self.send_response(code)
        self._cors()
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _resolve(self) -> tuple[Path | None, str | None, int]:
        """Map the request path to (file, generated-listing-root, status). Refuses anything odd."""
        raw = self.path.split("?", 1)[0].split("#", 1)[0]
        if not raw.startswith("/") or raw.startswith("//") or "\\" in raw or "\0" in raw:
            return None, None, HTTPStatus.NOT_FOUND
        try:
            path = urllib.parse.unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None, None, HTTPStatus.NOT_FOUND
        if "\\" in path or "\0" in path or path.startswith("//"):
            return None, None, HTTPStatus.NOT_FOUND
        parts = path.split("/")[1:]
        if any(p in (".", "..") or p.startswith(".") for p in parts) or any(p == "" for p in parts[:-1]):
            return None, None, HTTPStatus.NOT_FOUND
        prefix = parts[0] if len(parts) > 1 and parts[0] in self.server.roots and parts[0] else ""
        rel = parts[1:] if prefix else parts
        if prefix and rel == ["index.json"]:
            return None, prefix, HTTPStatus.OK
        root = self.server.roots.get(prefix)
        if root is None or not root.is_dir():
            return None, None, HTTPStatus.NOT_FOUND
        root_real = os.path.realpath(root)
        target = os.path.join(root_real, *[p for p in rel if p])
        if prefix in ("models", "wheels"):  # files directly in the folder, of the kinds it is for
            name = rel[0] if len(rel) == 1 else ""
            wanted = is_model_file(root_real, name) if prefix == "models" else name.endswith(".whl")
            if not wanted:
                return None, None, HTTPStatus.NOT_FOUND
        if os.path.isdir(target):
            if not raw.endswith("/"):  # so the page's relative links resolve inside the folder
                return None, None, HTTPStatus.MOVED_PERMANENTLY
            target = os.path.join(target, "index.html")
        elif raw.endswith("/"):  # /models/m.st/ names a folder, and there is none
            return None, None, HTTPStatus.NOT_FOUND
        real = os.path.realpath(target)
        if not _inside(real, root_real):
            return None, None, HTTPStatus.FORBIDDEN
        if not os.path.isfile(real):
            return None, None, HTTPStatus.NOT_FOUND
        return Path(real), None, HTTPStatus.OK

    def _listing(self, prefix: str) -> bytes:
        root = self.server.roots.get(prefix)
        exts = MODEL_EXTS if prefix == "models" else (".whl",) if prefix == "wheels" else ("",)
        files = []
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name) if root is not None else []
        except OSError:  # the folder is gone or unreadable: nothing to list
            entries = []
        root_real = os.path.realpath(root) if root is not None else ""
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(exts):
                continue
            try:  # files deleted while the folder is listed are skipped
                real = os.path.realpath(entry.path)
                if _inside(real, root_real) and os.path.isfile(real):
                    url = f"/{prefix}/{urllib.parse.quote(entry.name)}"
                    files.append({"name": entry.name, "size": os.path.getsize(real), "url": url})
            except OSError:
                continue
        return json.dumps({prefix: files}, indent=1).encode()

    # --- the response -----------------------------------------------------------
    def _serve(self, body: bool) -> None:
        path, listing, status = self._resolve()
        if listing is not None:
            data = self._listing(listing)
            self.send_response(HTTPStatus.OK)
            self._cors()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if body:
                self.wfile.write(data)
            return
        if status == HTTPStatus.MOVED_PERMANENTLY:
            query = self.path[len(self.path.split("?", 1)[0]):]
            self._error(status, "moved", {"Location": self.path.split("?", 1)[0] + "/" + query})
            return
        if path is None:
            self._error(status, "not found" if status == HTTPStatus.NOT_FOUND else "forbidden")
            return
        try:
            f = open(path, "rb")
        except OSError:
            self._error(HTTPStatus.FORBIDDEN, "cannot read file")
            return
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = f'"{size:x}-{st.st_mtime_ns:x}"'
            common = {
                "ETag": etag,
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                "Accept-Ranges": "bytes",
                "Cache-Control": "no-cache",
            }
            im = self.headers.get("If-Match")
            tags = [t.strip() for t in (im or "").split(",")]
            if (im is not None and etag not in tags and "*" not in tags) or (
                    im is None and _modified_since(self.headers.get("If-Unmodified-Since"), st.st_mtime)):
                self._error(HTTPStatus.PRECONDITION_FAILED, "the file changed", common)
                return
            inm = [t.strip() for t in (self.headers.get("If-None-Match") or "").split(",")]
            if (etag in inm or "*" in inm) and not self.headers.get("Range"):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self._cors()
                for k, v in common.items():
                    self.send_header(k, v)
                self.end_headers()
                return
            rng = parse_range(self.headers.get("Range"), size)
            if_range = self.headers.get("If-Range")
            if if_range and if_range != etag and if_range != common["Last-Modified"]:
                rng = None  # the client's copy is stale: send the whole file
            if rng == "unsatisfiable":
                self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "range not satisfiable",
                            {"Content-Range": f"bytes */{size}", **common})
                return
            start, stop = rng if isinstance(rng, tuple) else (0, size)
            self.send_response(HTTPStatus.PARTIAL_CONTENT if isinstance(rng, tuple) else HTTPStatus.OK)
            self._cors()
            for k, v in common.items():
                self.send_header(k, v)
            self.send_header("Content-Type", mime_type(path.name))
            self.send_header("Content-Length", str(stop - start))
            if isinstance(rng, tuple):
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
            self.end_headers()
            if body:
                self._copy(f, start, stop)

    def _copy(self, f: Any, start: int, stop: int) -> None:
        f.seek(start)
        left = stop - start
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:  # the file shrank under us: the length is now wrong, so drop the connection
                self.close_connection = True
                return
            self.wfile.write(chunk)
            left -= len(chunk)


class StaticServer(LimitedServer):
    """A server over `roots` (URL prefix -> folder), limited as server_limits says; `url` is where it listens."""

    def __init__(
        self,
        address: tuple[str, int],
        roots: Mapping[str, str | os.PathLike],
        quiet: bool = True,
        handler: type[BaseHTTPRequestHandler] = Handler,
    ) -> None:
        self.roots = {k.strip("/"): Path(v) for k, v in roots.items()}
        self.quiet = quiet
        if ":" in address[0]:  # an IPv6 address such as ::1
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (tests, notebooks); stop with `shutdown()` then `server_close()`."""
        t = threading.Thread(target=self.serve_forever, args=(0.05,), name="webrwkv-serve", daemon=True)
        t.start()
        return t


def make_server(
    host: str = "127.0.0.1", port: int = 0, roots: Mapping[str, str | os.PathLike] | None = None, quiet: bool = True
) -> StaticServer:
    """A server bound to (host, port); port 0 picks a free one. `roots` defaults to `default_roots()`."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise WebRwkvError(f"--port {port} is not a port number: pick one from 0 to 65535 (0 picks a free one)")
    host = host.strip("[]")  # "[::1]" as written in URLs
    try:
        return StaticServer((host, port), roots if roots is not None else default_roots(), quiet=quiet)
    except socket.gaierror as e:
        raise WebRwkvError(f"cannot listen on {host}:{port}: the host is unknown ({e.strerror or e}); "
                           "pass an address of this machine as --host, e.g. 127.0.0.1 or 0.0.0.0") from None
    except PermissionError:
        raise WebRwkvError(f"cannot listen on {host}:{port}: permission denied (ports below 1024 need "
                           "administrator rights): pick a --port of 1024 or above, e.g. 8000") from None
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            raise WebRwkvError(f"cannot listen on {host}:{port}: {host} is not an address of this machine; "
                               "pass one of its addresses as --host, e.g. 127.0.0.1 or 0.0.0.0") from None
        if e.errno == errno.EADDRINUSE:
            raise WebRwkvError(f"cannot listen on {host}:{port}: the port is in use (another server?); "
                               "pick another --port, or 0 for a free one") from None
        raise WebRwkvError(f"cannot listen on {host}:{port} ({e.strerror or e}): "
                           "pick another --port or --host") from None


def serve_main(args: Any) -> int:
    """`webrwkv serve`: serve web/, dist/ and the model folder until Ctrl-C."""
    model_dir = getattr(args, "model_dir", None)
    if model_dir and not os.path.isdir(model_dir):
        raise WebRwkvError(f"--model-dir {model_dir} is not a folder: pass the folder that holds the model files")
    roots = default_roots(model_dir)
    if not roots[""].is_dir():
        print(f"webrwkv: warning: no web/ folder at {roots['']} (serve from a source checkout)", file=sys.stderr)
    srv = make_server(args.host, args.port, roots, quiet=False)
    print(f"webrwkv: serving {srv.url}  (models from {roots['models']})", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0
