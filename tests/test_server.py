"""The static server over real sockets: Range, HEAD, ETag, CORS, MIME types, listings,
and refusal of every path that would leave its roots."""

import errno
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from webrwkv.errors import WebRwkvError
from webrwkv.cli import main as cli_main
from webrwkv.server import StaticServer, make_server, parse_range

SECRET = b"top secret, outside the roots"


@pytest.fixture
def site(tmp_path):
    web, dist, models = tmp_path / "web", tmp_path / "dist", tmp_path / "models"
    for d in (web / "sub", web / "vendor" / "pyodide", dist, models):
        d.mkdir(parents=True)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (web / "index.html").write_text("<!doctype html><title>webrwkv</title>")
    (web / "sub" / "index.html").write_text("sub page")
    (web / ".hidden").write_text("dotfile")
    files = {"app.js": b"console.log(1)", "m.mjs": b"export {}", "vendor/pyodide/pyodide.asm.wasm": b"\0asm\1\0\0\0",
             "s.css": b"body{}", "d.json": b"{}", "r.txt": b"hi", "a.zip": b"PK\3\4"}
    for name, data in files.items():
        (web / name).write_bytes(data)
    (dist / "webrwkv-0.1.0-py3-none-any.whl").write_bytes(b"PK\3\4wheel")
    model = bytes(range(256)) * 12288  # 3 MiB, every byte position distinct mod 256
    (models / "tiny.safetensors").write_bytes(model)
    (models / "b.st").write_bytes(b"st")
    (models / "notes.md").write_text("not a model")
    os.symlink(tmp_path / "secret.txt", models / "link.st")
    os.symlink(tmp_path, web / "escape")
    srv = make_server("127.0.0.1", 0, {"": web, "wheels": dist, "models": models})
    srv.start()
    yield srv, tmp_path, model
    srv.shutdown()
    srv.server_close()


def request(srv, method, path, headers=None):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def raw_request(srv, path: bytes) -> tuple[int, bytes]:
    """Send the request line byte for byte (http.client would refuse NUL and friends)."""
    with socket.create_connection(srv.server_address[:2], timeout=10) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_index_and_headers(site):
    srv, _, _ = site
    assert srv.url.startswith("http://127.0.0.1:")
    resp, body = request(srv, "GET", "/")
    assert resp.status == 200 and b"<title>webrwkv" in body
    h = resp.headers
    assert h["Content-Type"].startswith("text/html")
    assert h["Content-Length"] == str(len(body))
    assert h["Cache-Control"] == "no-cache" and h["Accept-Ranges"] == "bytes"
    assert h["Access-Control-Allow-Origin"] == "*"
    for name in ("Content-Range", "Content-Length", "ETag", "Accept-Ranges"):
        assert name in h["Access-Control-Expose-Headers"]
    assert h["ETag"].startswith('"') and "GMT" in h["Last-Modified"]
    assert request(srv, "GET", "/sub/")[1] == b"sub page"
    resp, _ = request(srv, "GET", "/sub?x=1")
    assert resp.status == 301 and resp.headers["Location"] == "/sub/?x=1"
    assert request(srv, "GET", "/index.html?v=3#x")[1] == body


@pytest.mark.parametrize("path,mime", [
    ("/app.js", "text/javascript"), ("/m.mjs", "text/javascript"), ("/s.css", "text/css"),
    ("/d.json", "application/json"), ("/r.txt", "text/plain"), ("/a.zip", "application/zip"),
    ("/vendor/pyodide/pyodide.asm.wasm", "application/wasm"),
    ("/wheels/webrwkv-0.1.0-py3-none-any.whl", "application/zip"),
    ("/models/tiny.safetensors", "application/octet-stream"), ("/models/b.st", "application/octet-stream"),
])
def test_mime_types(site, path, mime):
    resp, _ = request(site[0], "HEAD", path)
    assert resp.status == 200 and resp.headers["Content-Type"].split(";")[0] == mime


def test_head_has_headers_and_no_body(site):
    srv, _, model = site
    resp, body = request(srv, "HEAD", "/models/tiny.safetensors")
    assert resp.status == 200 and body == b""
    assert resp.headers["Content-Length"] == str(len(model))
    resp, body = request(srv, "HEAD", "/models/tiny.safetensors", {"Range": "bytes=5-9"})
    assert resp.status == 206 and body == b"" and resp.headers["Content-Range"] == f"bytes 5-9/{len(model)}"


def test_full_model_streamed(site):
    srv, _, model = site
    resp, body = request(srv, "GET", "/models/tiny.safetensors")
    assert resp.status == 200 and body == model


@pytest.mark.parametrize("rng,start,stop", [
    ("bytes=10-19", 10, 20), ("bytes=-5", -5, None), ("bytes=3000000-", 3000000, None),
    ("bytes=0-0", 0, 1), ("bytes=100-999999999", 100, None), ("bytes=-99999999", 0, None),
    ("BYTES = 7 - 8", 7, 9),
])
def test_range_requests(site, rng, start, stop):
    srv, _, model = site
    resp, body = request(srv, "GET", "/models/tiny.safetensors", {"Range": rng})
    want = model[start:stop]
    first = start % len(model)
    assert resp.status == 206 and body == want
    assert resp.headers["Content-Range"] == f"bytes {first}-{first + len(want) - 1}/{len(model)}"
    assert resp.headers["Content-Length"] == str(len(want))


@pytest.mark.parametrize("rng", ["bytes=3145728-", "bytes=5000000-5000010", "bytes=-0"])
def test_unsatisfiable_range_is_416(site, rng):
    srv, _, model = site
    resp, _ = request(srv, "GET", "/models/tiny.safetensors", {"Range": rng})
    assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{len(model)}"


@pytest.mark.parametrize("rng", ["bytes=abc", "bytes=0-1,5-6", "items=0-5", "bytes=9-2", "bytes=-", "bytes 0-4"])
def test_malformed_or_multi_range_is_ignored(site, rng):
    srv, _, model = site
    resp, body = request(srv, "GET", "/models/tiny.safetensors", {"Range": rng})
    assert resp.status == 200 and body == model and "Content-Range" not in resp.headers


def test_conditional_requests(site):
    srv, _, model = site
    resp, _ = request(srv, "HEAD", "/models/b.st")
    etag = resp.headers["ETag"]
    resp, body = request(srv, "GET", "/models/b.st", {"If-None-Match": etag})
    assert resp.status == 304 and body == b""
    resp, body = request(srv, "GET", "/models/b.st", {"If-None-Match": '"other"'})
    assert resp.status == 200 and body == b"st"
    resp, body = request(srv, "GET", "/models/b.st", {"Range": "bytes=1-", "If-Range": etag})
    assert resp.status == 206 and body == b"t"
    resp, body = request(srv, "GET", "/models/b.st", {"Range": "bytes=1-", "If-Range": '"stale"'})
    assert resp.status == 200 and body == b"st"


def test_etag_changes_with_the_file(site):
    srv, root, _ = site
    e1 = request(srv, "HEAD", "/models/b.st")[0].headers["ETag"]
    (root / "models" / "b.st").write_bytes(b"longer now")
    resp, _ = request(srv, "HEAD", "/models/b.st")
    assert resp.headers["ETag"] != e1 and resp.headers["Content-Length"] == "10"


def test_options_preflight_and_other_methods(site):
    srv = site[0]
    resp, body = request(srv, "OPTIONS", "/models/tiny.safetensors",
                         {"Origin": "http://example.test", "Access-Control-Request-Headers": "range"})
    assert resp.status == 204 and body == b""
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Range" in resp.headers["Access-Control-Allow-Headers"]
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    for method in ("POST", "PUT", "DELETE"):
        resp, _ = request(srv, method, "/index.html")
        assert resp.status == 405 and "GET" in resp.headers["Allow"]


def test_listings(site):
    srv, root, model = site
    resp, body = request(srv, "GET", "/models/index.json")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"models": [
        {"name": "b.st", "size": 2, "url": "/models/b.st"},
        {"name": "tiny.safetensors", "size": len(model), "url": "/models/tiny.safetensors"},
    ]}  # the symlink out of the folder and non-model files are not listed
    (root / "models" / "my model #2.st").write_bytes(b"spaced")
    listed = json.loads(request(srv, "GET", "/models/index.json")[1])["models"]
    assert listed[1] == {"name": "my model #2.st", "size": 6, "url": "/models/my%20model%20%232.st"}
    assert request(srv, "GET", listed[1]["url"])[1] == b"spaced"
    wheels = json.loads(request(srv, "GET", "/wheels/index.json")[1])["wheels"]
    assert [w["name"] for w in wheels] == ["webrwkv-0.1.0-py3-none-any.whl"]


def test_missing_model_dir_serves_nothing(tmp_path):
    (tmp_path / "web").mkdir()
    srv = make_server("127.0.0.1", 0, {"": tmp_path / "web", "models": tmp_path / "nope"})
    srv.start()
    try:
        assert json.loads(request(srv, "GET", "/models/index.json")[1]) == {"models": []}
        assert request(srv, "GET", "/models/x.st")[0].status == 404
        assert request(srv, "GET", "/wheels/x.whl")[0].status == 404
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("path", [
    b"/../secret.txt", b"/models/../../secret.txt", b"/models/../secret.txt", b"/%2e%2e/secret.txt",
    b"/%2E%2E%2Fsecret.txt", b"/models/%2e%2e/%2e%2e/secret.txt", b"/models/..%2f..%2fsecret.txt",
    b"//etc/passwd", b"/%2F%2Fetc/passwd", b"//" + os.fsencode(os.path.abspath(__file__)),
    b"/models/..\\..\\secret.txt", b"/models/..%5c..%5csecret.txt", b"/index.html%00.txt",
    b"/index.html\x00.txt", b"/models/link.st", b"/escape/secret.txt", b"/.hidden", b"/sub/./index.html",
    b"/sub//index.html", b"/%ff%fe", b"secret.txt",
])
def test_paths_outside_the_roots_are_refused(site, path):
    status, data = raw_request(site[0], path)
    assert status in (400, 403, 404), data[:200]
    assert SECRET not in data and b"dotfile" not in data and b"sub page" not in data


def test_symlink_out_is_forbidden(site):
    assert raw_request(site[0], b"/models/link.st")[0] == 403


def test_client_disconnect_is_quiet_and_server_keeps_going(site, capsys):
    srv, _, model = site
    for _ in range(3):
        with socket.create_connection(srv.server_address[:2], timeout=10) as s:
            s.sendall(b"GET /models/tiny.safetensors HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # reset on close
    resp, body = request(srv, "GET", "/models/tiny.safetensors", {"Range": "bytes=-3"})
    assert body == model[-3:]
    assert "Traceback" not in capsys.readouterr().err


def test_keep_alive_serves_several_requests_on_one_connection(site):
    srv, _, model = site
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    for a in (0, 1000, 2000000):
        conn.request("GET", "/models/tiny.safetensors", headers={"Range": f"bytes={a}-{a + 99}"})
        assert conn.getresponse().read() == model[a : a + 100]
    conn.close()


def test_parse_range_edges():
    assert parse_range("bytes=0-", 0) == "unsatisfiable"
    assert parse_range("bytes=-5", 0) == "unsatisfiable"
    assert parse_range("bytes=2-3", 10) == (2, 4)
    assert parse_range(None, 10) is None and parse_range("bytes=1-2, 4-5", 10) is None


def test_port_in_use_is_a_clear_error(site):
    with pytest.raises(WebRwkvError, match="in use.*--port"):
        make_server("127.0.0.1", site[0].server_address[1])


@pytest.mark.parametrize("port", [99999, 65536, -1])
def test_port_out_of_range_is_a_clear_error(port, capsys):
    with pytest.raises(WebRwkvError, match=f"--port {port} .*0 to 65535"):
        make_server("127.0.0.1", port, {})
    assert cli_main(["serve", "--port", str(port)]) == 2  # the command says so too, with no traceback
    err = capsys.readouterr().err
    assert "0 to 65535" in err and "Traceback" not in err


@pytest.mark.parametrize("host, words", [
    ("no-such-host.invalid", ["host is unknown", "--host"]),  # the .invalid domain never resolves
    ("192.0.2.1", ["not an address of this machine", "--host"]),  # a documentation-only address
])
def test_bad_host_is_a_clear_error(host, words):
    with pytest.raises(WebRwkvError) as ei:
        make_server(host, 0, {})
    assert all(w in str(ei.value) for w in words), str(ei.value)


def test_permission_denied_is_a_clear_error(monkeypatch):
    # tests may run as root, where every port binds: make the bind fail the way a low port does for a user
    def refuse(self):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(StaticServer, "server_bind", refuse)
    with pytest.raises(WebRwkvError, match="permission denied.*1024 or above"):
        make_server("127.0.0.1", 80, {})


def test_ipv6_host(tmp_path):
    (tmp_path / "m.st").write_bytes(b"12345")
    try:
        srv = make_server("[::1]", 0, {"models": tmp_path})
    except WebRwkvError as e:
        pytest.skip(f"no IPv6 loopback here ({e})")
    srv.start()
    try:
        assert srv.url.startswith("http://[::1]:")
        conn = http.client.HTTPConnection("::1", srv.server_address[1], timeout=10)
        conn.request("GET", "/models/m.st", headers={"Range": "bytes=1-2"})
        assert conn.getresponse().read() == b"23"
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_serve_command_prints_url_and_serves(tmp_path):
    (tmp_path / "m.st").write_bytes(b"12345")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "webrwkv", "serve", "--port", "0", "--model-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line
        url = line.split()[2]
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/models/m.st", headers={"Range": "bytes=1-2"})
        assert conn.getresponse().read() == b"23"
        conn.close()
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "missing")], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--model-dir" in bad.stderr


# --- hostile requests ---------------------------------------------------------------------------------------

def exchange(srv, data: bytes, wait: float = 2.0) -> bytes:
    """Send raw bytes on one connection; everything the server answers until it closes or is quiet `wait` s."""
    with socket.create_connection(srv.server_address[:2], timeout=wait) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            pass
    return got


@pytest.mark.parametrize("rng,status,want", [
    ("bytes=" + "9" * 5000 + "-", 416, None),  # once: int() of 5000 digits, a traceback, a dropped connection
    ("bytes=0-" + "9" * 5000, 206, slice(0, None)),
    ("bytes=-" + "9" * 5000, 206, slice(0, None)),
    ("bytes=0000000000000000000000000010-19", 206, slice(10, 20)),
    ("bytes=\u00b2-", 200, slice(0, None)),  # superscript two: isdigit() says yes, int() says no
    ("bytes=1-\u00b3", 200, slice(0, None)),
], ids=["start-5000-digits", "end-5000-digits", "suffix-5000-digits", "leading-zeros", "superscript-start",
        "superscript-end"])
def test_hostile_range_numbers_are_ignored_or_416(site, capsys, rng, status, want):
    srv, _, model = site
    answer = exchange(srv, f"GET /models/tiny.safetensors HTTP/1.1\r\nHost: x\r\nRange: {rng}\r\n"
                           "Connection: close\r\n\r\n".encode("latin-1"))  # as HTTP/1.1 header bytes
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head[:100]
    if want is not None:
        assert body == model[want]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("path,status", [
    ("/models/tiny.safetensors", 200), ("/models/b.st", 200), ("/models/old.pth", 200),
    ("/models/b.vocab.txt", 200), ("/models/b.json", 200), ("/models/MODEL_CARD.md", 200),
    ("/models/notes.md", 404), ("/models/Documents/notes.txt", 404), ("/models/Documents/deep.st", 404),
    ("/models/orphan.vocab.txt", 404), ("/models/orphan.json", 404), ("/models/config.json", 404),
    ("/models/.vocab.txt", 404), ("/models/id_rsa", 404), ("/wheels/notes.txt", 404),
    ("/wheels/webrwkv-0.1.0-py3-none-any.whl", 200),
])
def test_model_folder_serves_only_models_and_their_sidecars(site, path, status):
    """--model-dir may be a home folder, and every answer carries Access-Control-Allow-Origin: *: once any
    file under it was served to any web page (/models/Documents/notes.txt)."""
    srv, root, _ = site
    models = root / "models"
    (models / "Documents").mkdir(exist_ok=True)
    for name in ("Documents/notes.txt", "Documents/deep.st", "old.pth", "b.vocab.txt", "b.json", "MODEL_CARD.md",
                 "orphan.vocab.txt", "orphan.json", "config.json", ".vocab.txt", "id_rsa"):
        (models / name).write_bytes(b"private" if "notes" in name or "id_rsa" in name else b"ok")
    (root / "dist" / "notes.txt").write_bytes(b"private")
    resp, body = request(srv, "GET", path)
    assert resp.status == status, (path, resp.status)
    assert b"private" not in body


def test_a_file_name_with_a_trailing_slash_is_404(site):
    srv = site[0]
    for path in ("/models/b.st/", "/r.txt/", "/wheels/webrwkv-0.1.0-py3-none-any.whl/"):
        assert request(srv, "GET", path)[0].status == 404, path
    assert request(srv, "GET", "/sub/")[0].status == 200  # a real folder still works


@pytest.mark.parametrize("head", [
    b"POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n",
    b"GET /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n",
    b"DELETE /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n",
])
def test_a_request_body_is_never_answered_as_a_request(site, head):
    """The body was never read, so a POST whose body was `GET ...` got a second answer (smuggling)."""
    srv = site[0]
    smuggled = b"GET /models/tiny.safetensors HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = exchange(srv, head % len(smuggled) + smuggled, wait=1.0)
    assert answer.count(b"HTTP/1.1 ") == 1 and b"100 Continue" not in answer, answer[:300]
    # the connection stays usable: the body was read and dropped
    conn_answer = exchange(srv, head % len(smuggled) + smuggled + b"GET /r.txt HTTP/1.1\r\nHost: x\r\n\r\n", 1.0)
    assert conn_answer.count(b"HTTP/1.1 ") == 2 and conn_answer.endswith(b"hi")


@pytest.mark.parametrize("framing", [
    b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n",
    b"Content-Length: 99999999\r\n\r\n%x%s",
    b"Content-Length: 1\r\nContent-Length: %x\r\n\r\n%s",
])
def test_bodies_it_does_not_read_close_the_connection(site, framing):
    srv = site[0]
    smuggled = b"GET /models/tiny.safetensors HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = exchange(srv, b"POST /index.html HTTP/1.1\r\nHost: x\r\n" + framing % (len(smuggled), smuggled))
    assert answer.startswith(b"HTTP/1.1 405") and answer.count(b"HTTP/1.1 ") == 1
    assert b"Connection: close" in answer


def test_listing_skips_files_deleted_while_listed(site, monkeypatch):
    """Files deleted between the folder read and their stat once dropped the request (FileNotFoundError)."""
    srv, root, model = site
    (root / "models" / "gone.st").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir_then_delete(path):
        entries = list(real_scandir(path))
        if os.path.exists(root / "models" / "gone.st"):
            os.remove(root / "models" / "gone.st")
        return iter(entries)

    monkeypatch.setattr(os, "scandir", scandir_then_delete)
    resp, body = request(srv, "GET", "/models/index.json")
    assert resp.status == 200
    assert [m["name"] for m in json.loads(body)["models"]] == ["b.st", "tiny.safetensors"]


def test_listing_of_a_vanished_folder_is_empty(tmp_path):
    (tmp_path / "m").mkdir()
    srv = make_server("127.0.0.1", 0, {"models": tmp_path / "m"})
    srv.start()
    try:
        (tmp_path / "m").rmdir()
        assert json.loads(request(srv, "GET", "/models/index.json")[1]) == {"models": []}
    finally:
        srv.shutdown()
        srv.server_close()


def test_if_match_and_if_unmodified_since_are_honoured(site):
    srv, root, _ = site
    resp, _ = request(srv, "HEAD", "/models/b.st")
    etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
    assert request(srv, "GET", "/models/b.st", {"If-Match": etag})[1] == b"st"
    assert request(srv, "GET", "/models/b.st", {"If-Match": f'"x", {etag}'})[1] == b"st"
    assert request(srv, "GET", "/models/b.st", {"If-Match": "*"})[0].status == 200
    resp, body = request(srv, "GET", "/models/b.st", {"If-Match": '"stale"', "Range": "bytes=0-0"})
    assert resp.status == 412 and b"st" not in body.replace(b"changed", b"")
    assert request(srv, "GET", "/models/b.st", {"If-Unmodified-Since": modified})[0].status == 200
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert request(srv, "GET", "/models/b.st", {"If-Unmodified-Since": old})[0].status == 412
    assert request(srv, "GET", "/models/b.st", {"If-Unmodified-Since": "not a date"})[0].status == 200
    # If-Match wins over If-Unmodified-Since, as the HTTP rules say
    assert request(srv, "GET", "/models/b.st", {"If-Match": etag, "If-Unmodified-Since": old})[0].status == 200
    resp, _ = request(srv, "OPTIONS", "/models/b.st")
    assert "If-Match" in resp.headers["Access-Control-Allow-Headers"]


# --- what one client may cost ----------------------------------------------------------------------------

def test_a_client_trickling_its_request_is_cut_off_at_the_deadline(site, monkeypatch):
    """The timeout was per receive: a byte every 100 s held a thread forever. Now the whole request has a
    deadline (shortened here to 1 s)."""
    from webrwkv import server_limits

    monkeypatch.setattr(server_limits, "REQUEST_DEADLINE", 1.0)
    srv = site[0]
    with socket.create_connection(srv.server_address[:2], timeout=10) as s:
        t0 = time.monotonic()
        closed = False
        for c in b"GET /r.txt HTTP/1.1\r\nHost: x\r\n":
            try:
                s.sendall(bytes([c]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - t0 > 8:
                break
        if not closed:
            s.settimeout(5)
            try:
                closed = s.recv(100) == b""
            except OSError:
                closed = True
    assert closed and time.monotonic() - t0 < 8


def test_connections_are_bounded_and_the_excess_gets_503(site, monkeypatch):
    from webrwkv.server import StaticServer

    monkeypatch.setattr(StaticServer, "max_connections", 2)
    monkeypatch.setattr(StaticServer, "max_waiting", 1)
    _, root, _ = site
    srv = make_server("127.0.0.1", 0, {"models": root / "models"})
    srv.start()
    threads_before = threading.active_count()
    idle = [socket.create_connection(srv.server_address[:2], timeout=10) for _ in range(3)]
    try:
        time.sleep(0.3)  # two served (idle, waiting for a request), one waiting for a worker
        answer = exchange(srv, b"GET /models/b.st HTTP/1.1\r\nHost: x\r\n\r\n", wait=3)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After" in answer
        assert threading.active_count() - threads_before <= 2
        idle[0].sendall(b"GET /models/b.st HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert idle[0].recv(1000).startswith(b"HTTP/1.1 200")
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    assert request(srv, "GET", "/models/b.st")[1] == b"st"  # room again once they left
    srv.shutdown()
    srv.server_close()
    assert srv.request_queue_size >= 128


def test_a_client_that_stops_reading_frees_its_worker(site, monkeypatch):
    """A client taking an answer's 1 MiB chunks slower than SEND_TIMEOUT (shortened to 1 s) is dropped."""
    from webrwkv import server_limits
    from webrwkv.server import Handler, StaticServer

    monkeypatch.setattr(Handler, "timeout", 1.0)
    monkeypatch.setattr(StaticServer, "max_connections", 1)
    _, root, _ = site
    with open(root / "models" / "big.st", "wb") as f:
        f.truncate(256 << 20)  # sparse: far more than the socket buffers hold
    srv = make_server("127.0.0.1", 0, {"models": root / "models"})
    srv.start()
    try:
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(srv.server_address[:2])
        stuck.sendall(b"GET /models/big.st HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=20)
        conn.request("GET", "/models/b.st")
        assert conn.getresponse().read() == b"st"  # served once the stuck client was dropped
        assert time.monotonic() - t0 < 15
        conn.close()
        stuck.close()
    finally:
        srv.shutdown()
        srv.server_close()
    assert server_limits.SEND_TIMEOUT >= 30


def test_server_close_ends_idle_connections_at_once(site):
    srv = site[0]
    s = socket.create_connection(srv.server_address[:2], timeout=10)
    time.sleep(0.2)
    t0 = time.monotonic()
    srv.shutdown()
    srv.server_close()
    assert s.recv(10) == b"" and time.monotonic() - t0 < 5
    s.close()


def test_serve_help_states_the_limits(capsys):
    from webrwkv import server_limits as lim

    with pytest.raises(SystemExit):
        cli_main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for phrase in (f"{lim.MAX_CONNECTIONS} served at once", f"{lim.MAX_WAITING} more waiting",
                   f"backlog {lim.BACKLOG}", f"within {lim.REQUEST_DEADLINE:g} s", f"1 MiB within {lim.SEND_TIMEOUT:g} s",
                   f"bodies over {lim.MAX_BODY >> 20} MiB", ".pth", "MODEL_CARD.md"):
        assert phrase in out, phrase


@pytest.mark.parametrize("line", [b"GET /r.txt", b"GET /r.txt HTTP/0.9", b"GET /nope HTTP/0.9", b"HEAD /r.txt HTTP/9"])
def test_every_answer_has_a_status_line_even_to_http_0_9(site, line):
    """Found by the request fuzzer: HTTP/0.9 answers were bare bodies, an error page indistinguishable from a
    file (and with no headers at all)."""
    answer = exchange(site[0], line + b"\r\nHost: x\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] [1-5]\d\d ", answer), answer[:80]
    assert b"\r\nContent-Length: " in answer.split(b"\r\n\r\n")[0]


def test_idle_keep_alive_ending_is_not_logged_but_a_stalled_request_is(tmp_path, monkeypatch, capsys):
    """Browsers keep idle connections open: closing one at the deadline is routine, not a logged error;
    a request that stalls half-way is worth a line in the log."""
    from webrwkv import server_limits

    monkeypatch.setattr(server_limits, "REQUEST_DEADLINE", 0.5)
    (tmp_path / "m.st").write_bytes(b"12")
    srv = make_server("127.0.0.1", 0, {"models": tmp_path}, quiet=False)
    srv.start()
    try:
        with socket.create_connection(srv.server_address[:2], timeout=10) as s:
            s.sendall(b"GET /models/m.st HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while chunk := s.recv(1000):  # the answer, then the close at the deadline (idle)
                got += chunk
            assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"\r\n\r\n12")
        idle_log = capsys.readouterr().err
        with socket.create_connection(srv.server_address[:2], timeout=10) as s:
            s.sendall(b"GET /models/m.st HT")
            assert s.recv(1000) == b""
        stalled_log = capsys.readouterr().err
    finally:
        srv.shutdown()
        srv.server_close()
    assert "timed out" not in idle_log and '"GET /models/m.st HTTP/1.1" 200' in idle_log
    assert "Request timed out" in stalled_log
