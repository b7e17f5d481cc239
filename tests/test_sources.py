"""Byte sources: local files, and HTTP range reads against real local servers (the project's own
and tiny misbehaving ones), counting requests to prove only the asked ranges were fetched."""

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from webrwkv.errors import SourceError
from webrwkv.safetensors import read_header, read_tensor, write_safetensors
from webrwkv.server import Handler, StaticServer, parse_range
from webrwkv.sources import BytesSource, HttpRangeSource, LocalFileSource, open_source, plan_ranges

DATA = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


class CountingHandler(Handler):
    def _serve(self, body: bool) -> None:
        self.server.log.append((self.command, self.headers.get("Range")))
        super()._serve(body)


@pytest.fixture
def served(tmp_path):
    (tmp_path / "data.bin").write_bytes(DATA)
    (tmp_path / "empty.bin").write_bytes(b"")
    srv = StaticServer(("127.0.0.1", 0), {"": tmp_path, "models": tmp_path}, handler=CountingHandler)
    srv.log = []
    srv.start()
    yield srv, tmp_path
    srv.shutdown()
    srv.server_close()


class BadHandler(BaseHTTPRequestHandler):
    """Serves `server.data` but misbehaves as `server.mode` says; request 0 is the source's probe."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _plain(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        srv, mode = self.server, self.server.mode
        n = len(srv.log)
        srv.log.append(self.headers.get("Range"))
        if mode == "403":
            return self._plain(403)
        if mode == "503-first" and n == 1:
            return self._plain(503)
        if mode == "no-range":
            return self._whole()
        a, b = parse_range(self.headers.get("Range"), len(srv.data))
        changed = n > 0 and mode in ("etag-changes", "size-changes")
        total = len(srv.data) + (1 if changed and mode == "size-changes" else 0)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {a}-{b - 1}/{total}")
        self.send_header("Content-Length", str(b - a))
        self.send_header("ETag", '"v2"' if changed and mode == "etag-changes" else '"v1"')
        self.end_headers()
        body = srv.data[a:b]
        if n > 0 and (mode == "drop-always" or (mode == "drop-first" and n == 1)):
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        if a > 0 and mode == "slow":
            srv.wake.wait(10)
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout tests)
            self.close_connection = True

    def _whole(self):
        """200 with the whole (possibly huge, generated) body; records how much got out."""
        srv = self.server
        self.send_response(200)
        self.send_header("Content-Length", str(srv.whole_size))
        self.end_headers()
        chunk = bytes(1 << 20)
        try:
            while srv.sent < srv.whole_size:
                k = min(len(chunk), srv.whole_size - srv.sent)
                self.wfile.write(chunk[:k])
                srv.sent += k
        except OSError:
            self.close_connection = True
        finally:
            srv.done.set()


@pytest.fixture
def bad():
    servers = []

    def start(mode, data=DATA, whole_size=0):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), BadHandler)
        srv.daemon_threads = True
        srv.mode, srv.data, srv.whole_size, srv.sent, srv.log = mode, data, whole_size, 0, []
        srv.wake, srv.done = threading.Event(), threading.Event()
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(srv)
        return srv, f"http://127.0.0.1:{srv.server_address[1]}/m.st"

    yield start
    for srv in servers:
        srv.wake.set()
        srv.shutdown()
        srv.server_close()


def test_local_file_source(tmp_path):
    p = tmp_path / "d.bin"
    p.write_bytes(DATA)
    with LocalFileSource(p) as s:
        assert s.size == len(DATA) and s.identity == f"{len(DATA)}-{os.stat(p).st_mtime_ns}"
        assert s.read(1000, 50) == DATA[1000:1050] and s.read(len(DATA), 0) == b""
        assert s.read_ranges([(5, 3), (0, 2), (299_990, 10)]) == [DATA[5:8], DATA[:2], DATA[-10:]]
        with pytest.raises(SourceError, match="truncated"):
            s.read(len(DATA) - 5, 10)
    with pytest.raises(SourceError, match="no such file"):
        LocalFileSource(tmp_path / "missing.st")
    with pytest.raises(SourceError, match="directory"):
        LocalFileSource(tmp_path)
    b = BytesSource(DATA)
    assert b.size == len(DATA) and b.read(7, 3) == DATA[7:10]


def test_plan_ranges_coalesces_neighbours_within_limits():
    ranges = [(100, 10), (0, 10), (115, 5), (1000, 10), (1015, 100), (5000, 0)]
    assert plan_ranges(ranges, max_gap=5, max_request=1000) == [
        (0, 10, [1]), (100, 120, [0, 2]), (1000, 1115, [3, 4])]
    assert plan_ranges(ranges, max_gap=5, max_request=50) == [
        (0, 10, [1]), (100, 120, [0, 2]), (1000, 1010, [3]), (1015, 1115, [4])]
    assert plan_ranges([(0, 10), (5, 10)], max_gap=0, max_request=100) == [(0, 15, [0, 1])]


def test_http_fetches_only_the_asked_ranges_and_coalesces(served):
    srv, _ = served
    src = HttpRangeSource(srv.url + "models/data.bin", head_bytes=1024, max_gap=100, max_request=100_000)
    assert srv.log == [("GET", "bytes=0-1023")]
    assert src.size == len(DATA) and src.identity.startswith('"')
    assert src.read(200_000, 10) == DATA[200_000:200_010]
    assert srv.log[-1] == ("GET", "bytes=200000-200009")
    got = src.read_ranges([(10_000, 10), (50_000, 5), (10_020, 10), (10_040, 10), (100, 10), (60_000, 0)])
    assert got == [DATA[10_000:10_010], DATA[50_000:50_005], DATA[10_020:10_030], DATA[10_040:10_050],
                   DATA[100:110], b""]
    assert sorted(srv.log[2:]) == [("GET", "bytes=10000-10049"), ("GET", "bytes=50000-50004")]
    assert src.read(5_000, 250_000) == DATA[5_000:255_000]  # over max_request: split in three
    assert sorted(r for _, r in srv.log[4:]) == ["bytes=105000-204999", "bytes=205000-254999", "bytes=5000-104999"]
    assert src.read(0, 1024) == DATA[:1024] and len(srv.log) == 7 == src.requests  # prefix is cached
    with pytest.raises(SourceError, match="truncated"):
        src.read(len(DATA) - 5, 10)
    assert len(srv.log) == 7


def test_model_header_and_tensors_over_http(served):
    srv, root = served
    rng = np.random.default_rng(3)
    arrays = {f"blocks.{i}.w": rng.standard_normal((256, 128)).astype(np.float32) for i in range(4)}
    write_safetensors(root / "m.safetensors", arrays, dtype="fp16")
    with open_source(srv.url + "models/m.safetensors") as src:
        assert isinstance(src, HttpRangeSource)
        h = read_header(src)
        assert len(srv.log) == 1  # the header came with the first request
        infos = [h.tensors[k] for k in sorted(arrays)]
        far = [i for i in infos if i.end > 64 * 1024]
        raws = src.read_ranges([(i.start, i.nbytes) for i in far])
        assert len(srv.log) == 2  # contiguous tensors: one request
        for info, raw in zip(far, raws):
            assert raw == (root / "m.safetensors").read_bytes()[info.start : info.end]
        for k in arrays:
            np.testing.assert_array_equal(read_tensor(src, h.tensors[k]), arrays[k].astype(np.float16))


def test_open_source_picks_the_kind(served, tmp_path):
    srv, root = served
    assert isinstance(open_source(root / "data.bin"), LocalFileSource)
    assert isinstance(open_source(f"file://{root / 'data.bin'}"), LocalFileSource)
    s = open_source(srv.url + "data.bin", head_bytes=16)
    assert isinstance(s, HttpRangeSource) and s.read(20, 4) == DATA[20:24]
    assert open_source(s) is s


def test_empty_file_over_http(served):
    srv, _ = served
    src = HttpRangeSource(srv.url + "empty.bin")
    assert src.size == 0 and src.read(0, 0) == b"" and len(srv.log) == 1


def test_not_found_and_forbidden_say_so_without_retrying(served, bad):
    srv, _ = served
    url = srv.url + "models/missing.st"
    with pytest.raises(SourceError, match="not found") as ei:
        HttpRangeSource(url, retries=3)
    assert url in str(ei.value) and len(srv.log) == 1
    bsrv, burl = bad("403")
    with pytest.raises(SourceError, match="access denied") as ei:
        HttpRangeSource(burl, retries=3)
    assert burl in str(ei.value) and len(bsrv.log) == 1


def test_server_ignoring_range_is_refused_without_downloading_it(bad):
    size = 256 << 20
    srv, url = bad("no-range", whole_size=size)
    with pytest.raises(SourceError, match="ignored the Range header"):
        HttpRangeSource(url, head_bytes=1024)
    assert srv.done.wait(10)
    assert srv.sent < size // 4 and len(srv.log) == 1


def test_small_file_sent_whole_is_accepted(bad):
    srv, url = bad("no-range", whole_size=500)
    src = HttpRangeSource(url, head_bytes=1024)
    assert src.size == 500 and src.read(490, 10) == bytes(10) and len(srv.log) == 1


@pytest.mark.parametrize("mode", ["etag-changes", "size-changes"])
def test_file_changed_between_requests(bad, mode):
    srv, url = bad(mode)
    src = HttpRangeSource(url, head_bytes=1024, retries=3)
    with pytest.raises(SourceError, match="changed on the server"):
        src.read(5000, 10)
    assert len(srv.log) == 2


def test_dropped_connection_is_retried_then_reported(bad):
    srv, url = bad("drop-always")
    src = HttpRangeSource(url, head_bytes=1024, retries=2, backoff=0.01)
    with pytest.raises(SourceError, match="failed after 3 attempts.*dropped"):
        src.read(5000, 4000)
    assert len(srv.log) == 4


@pytest.mark.parametrize("mode", ["drop-first", "503-first"])
def test_flaky_first_attempt_recovers(bad, mode):
    srv, url = bad(mode)
    src = HttpRangeSource(url, head_bytes=1024, retries=2, backoff=0.01)
    assert src.read(5000, 4000) == DATA[5000:9000]
    assert srv.log[1:] == ["bytes=5000-8999", "bytes=5000-8999"]


def test_slow_server_times_out_instead_of_hanging(bad):
    srv, url = bad("slow")
    src = HttpRangeSource(url, head_bytes=1024, timeout=0.5, retries=1, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="failed after 2 attempts"):
        src.read(5000, 10)
    assert time.monotonic() - t0 < 8 and srv.log.count("bytes=5000-5009") == 2


def test_unreachable_server_is_a_source_error():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BadHandler)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens there now
    with pytest.raises(SourceError, match="failed after 2 attempts"):
        HttpRangeSource(f"http://127.0.0.1:{port}/m.st", retries=1, backoff=0.01, timeout=2)
