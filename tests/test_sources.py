"""Byte sources: local files, and HTTP range reads against real local servers (the project's own
and tiny misbehaving ones), counting requests to prove only the asked ranges were fetched."""

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from gpu_util import GOLDEN

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
        if mode in ("503-first", "408-first", "429-first") and n == 1:
            return self._plain(int(mode[:3]))
        if mode == "416-later" and n > 0:
            return self._plain(416)
        if mode == "trickle-headers" and n > 0:
            return self._trickle(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n" + b"X-Pad: x\r\n" * 50)
        if mode == "no-range":
            return self._whole()
        a, b = parse_range(self.headers.get("Range"), len(srv.data))
        changed = n > 0 and mode in ("etag-changes", "size-changes")
        total = len(srv.data) + (1 if changed and mode == "size-changes" else 0)
        self.send_response(206)
        later = {k: v for k, v in srv.later.items() if n > 0}  # headers to send instead on later answers
        self.send_header("Content-Range", later.get("Content-Range", f"bytes {a}-{b - 1}/{total}"))
        self.send_header("Content-Length", later.get("Content-Length", str(b - a)))
        self.send_header("ETag", '"v2"' if changed and mode == "etag-changes" else '"v1"')
        if "Content-Encoding" in later:
            self.send_header("Content-Encoding", later["Content-Encoding"])
        self.end_headers()
        body = srv.data[a:b]
        if mode == "trickle-body" and n > 0:
            return self._trickle(body)
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

    def _trickle(self, data):
        """One byte every 0.2 s: never long enough for a socket timeout, forever for a whole read."""
        for i in range(len(data)):
            if self.server.wake.wait(0.2):
                break
            try:
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
            except OSError:
                break
        self.close_connection = True

    def _whole(self):
        """200 with the whole (possibly huge, generated) body; records how much got out."""
        srv = self.server
        self.send_response(200)
        self.send_header("Content-Length", srv.length or str(srv.whole_size))
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

    def start(mode, data=DATA, whole_size=0, later=None, length=None):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), BadHandler)
        srv.daemon_threads = True
        srv.mode, srv.data, srv.whole_size, srv.sent, srv.log = mode, data, whole_size, 0, []
        srv.later, srv.length = later or {}, length
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
    src = HttpRangeSource(srv.url + "data.bin", head_bytes=1024, max_gap=100, max_request=100_000)
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


# --- the file changes on the server mid-load: an error, never other bytes ---------------------------------

class TamperHandler(CountingHandler):
    """The project's server, told to behave like other servers: `server.drop` names headers it leaves out
    (from the `server.drop_after`-th answer on), and `server.ignore_if_range` makes it ignore If-Range."""

    def send_header(self, keyword, value):
        if keyword in self.server.drop and len(self.server.log) > self.server.drop_after:
            return
        super().send_header(keyword, value)

    def _serve(self, body):
        if self.server.ignore_if_range:
            del self.headers["If-Range"]
        super()._serve(body)


@pytest.fixture
def tamper(tmp_path):
    servers = []

    def start(drop=(), drop_after=0, ignore_if_range=False):
        srv = StaticServer(("127.0.0.1", 0), {"models": tmp_path}, handler=TamperHandler)
        srv.log, srv.drop, srv.drop_after, srv.ignore_if_range = [], set(drop), drop_after, ignore_if_range
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _model(root, seed):
    """A real model file (the golden v7, its tensors' bytes shuffled by `seed`): same size for every seed."""
    from webrwkv.models import load_weights
    from webrwkv.models.loader import to_layout

    info, w = load_weights(GOLDEN / "v7.st")
    rng = np.random.default_rng(seed)
    w = {k: rng.permutation(v.reshape(-1)).reshape(v.shape) for k, v in w.items()}
    path = root / f"m{seed}.st"
    write_safetensors(path, to_layout(info, w, "official"))
    return path


def _replace(path, new, same_second):
    """Swap `path` for `new` (same size) by a rename, as a deploy would; `same_second` keeps Last-Modified."""
    old = os.stat(path).st_mtime_ns
    mtime = old + 1 if same_second and (old + 1) % 10**9 else old + (0 if same_second else 2 * 10**9)
    os.utime(new, ns=(mtime, mtime))
    os.replace(new, path)


@pytest.mark.parametrize("way", [
    "last-modified-only",  # the server sends no ETag at all
    "last-modified-only-ignores-if-range",  # ... and ignores If-Range: only the Last-Modified check is left
    "etag-stops",  # the ETag vanishes after the first answer; Last-Modified stays the same
    "etag-stops-ignores-if-range",
    "etag-honest",  # the project's own server: ETag changes, If-Range gives 200
])
def test_file_replaced_mid_load_is_an_error_never_other_bytes(tamper, tmp_path, way):
    from webrwkv.models import load_weights

    drop, after = ({"ETag"}, 0) if way.startswith("last-modified") else ({"ETag"}, 1) if "stops" in way else ((), 0)
    srv = tamper(drop, after, ignore_if_range=way.endswith("ignores-if-range"))
    path = _model(tmp_path, 1)
    time.sleep(1.1)  # a file written this second would make the source wait a second for Last-Modified
    src = HttpRangeSource(srv.url + f"models/{path.name}", retries=1, backoff=0.01)
    header = read_header(src)  # from the first answer
    assert len(srv.log) == 1
    _replace(path, _model(tmp_path, 2), same_second="stops" in way)
    with pytest.raises(SourceError, match="changed on the server"):
        load_weights(src)
    with pytest.raises(SourceError, match="changed on the server"):
        read_tensor(src, header.tensors["head.weight"])
    assert len(srv.log) >= 2


def test_unchanged_file_loads_byte_exact_through_every_server_kind(tamper, tmp_path):
    """The checks refuse nothing that is right: Last-Modified only, ETag only, both: the file's bytes."""
    from webrwkv.models import load_weights

    path = _model(tmp_path, 3)
    time.sleep(1.1)
    _, want = load_weights(path)
    for drop, after in (({"ETag"}, 0), ({"Last-Modified"}, 0), ((), 0)):
        srv = tamper(drop, after)
        _, got = load_weights(HttpRangeSource(srv.url + f"models/{path.name}", head_bytes=4096))
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
        assert len(srv.log) >= 2


def test_no_validator_at_all_is_refused_before_a_second_request(tamper, tmp_path):
    srv = tamper({"ETag", "Last-Modified"})
    (tmp_path / "d.st").write_bytes(DATA)
    src = HttpRangeSource(srv.url + "models/d.st", head_bytes=1024)
    assert src.read(10, 10) == DATA[10:20]  # the cached first answer needs no check
    with pytest.raises(SourceError, match="neither ETag nor Last-Modified"):
        src.read(200_000, 10)
    assert len(srv.log) == 1


def test_last_modified_of_this_second_is_confirmed_a_second_later(tamper, tmp_path):
    """Last-Modified has one-second steps: a same-size file replaced within the second it was written looks
    the same. So a Last-Modified not yet a second older than the answer is asked again once it is."""
    srv = tamper({"ETag"})
    while time.time() % 1 > 0.3:  # start early in a second, so the replacement below falls in the same one
        time.sleep(0.05)
    path = _model(tmp_path, 4)
    src = HttpRangeSource(srv.url + f"models/{path.name}", head_bytes=4096, retries=0)
    assert len(srv.log) == 2  # the first answer was asked again
    new = _model(tmp_path, 5)
    os.replace(new, path)  # a fresh mtime: at least a second after the Last-Modified the source holds
    with pytest.raises(SourceError, match="changed on the server"):
        src.read(src.size - 100, 100)


def test_local_file_written_in_place_mid_load_is_an_error(tmp_path):
    path = tmp_path / "d.bin"
    path.write_bytes(DATA)
    src = LocalFileSource(path)
    assert src.read(0, 10) == DATA[:10]
    with open(path, "r+b") as f:  # same size, new bytes, in place
        f.write(bytes(10))
    os.utime(path, ns=(os.stat(path).st_mtime_ns + 10**9,) * 2)
    with pytest.raises(SourceError, match="changed on disk"):
        src.read(0, 10)
    with pytest.raises(SourceError, match="changed on disk"):
        src.view(0, 10)


def test_local_file_replaced_by_rename_keeps_its_bytes(tmp_path):
    path = tmp_path / "d.bin"
    path.write_bytes(DATA)
    src = LocalFileSource(path)
    (tmp_path / "new.bin").write_bytes(bytes(len(DATA)))
    os.replace(tmp_path / "new.bin", path)
    assert src.read(1000, 100) == DATA[1000:1100] and bytes(src.view(5, 5)) == DATA[5:10]


# --- misbehaving servers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("later,words", [
    ({"Content-Encoding": "gzip"}, "compressed"),
    ({"Content-Range": "bytes 5000-5009"}, "bad Content-Range"),  # no total
    ({"Content-Range": "bytes x-y/z"}, "bad Content-Range"),
    ({"Content-Range": "bytes 5000-5009/\u00b3\u00b2"}, "bad Content-Range"),  # superscripts pass isdigit()
    ({"Content-Range": "bytes " + "9" * 5000 + "-5009/300000"}, "bad Content-Range"),
    ({"Content-Range": "bytes 5009-5000/300000"}, "bad Content-Range"),
    ({"Content-Range": "bytes 4000-4009/300000"}, "asked for bytes 5000-5009 but got 4000-4009"),
    ({"Content-Length": "abc"}, "bad Content-Length"),
    ({"Content-Length": "-5"}, "bad Content-Length"),
    ({"Content-Length": "9"}, "Content-Length 9 for the 10 bytes"),
])
def test_bad_answers_to_range_requests_are_source_errors(bad, later, words):
    srv, url = bad("ok", later=later)
    src = HttpRangeSource(url, head_bytes=1024, retries=2, backoff=0.01)
    with pytest.raises(SourceError, match=words):
        src.read(5000, 10)
    assert len(srv.log) == 2  # a broken server is not retried


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", " "])
def test_bad_content_length_of_a_whole_small_file_is_a_source_error(bad, length):
    srv, url = bad("no-range", whole_size=500, length=length)
    with pytest.raises(SourceError, match="bad Content-Length"):
        HttpRangeSource(url, head_bytes=1024)


def test_416_in_the_middle_of_a_read_says_the_file_changed(bad):
    srv, url = bad("416-later")
    src = HttpRangeSource(url, head_bytes=1024, retries=3)
    with pytest.raises(SourceError, match="changed on the server"):
        src.read(5000, 10)
    assert len(srv.log) == 2


@pytest.mark.parametrize("mode", ["408-first", "429-first"])
def test_408_and_429_are_retried(bad, mode):
    srv, url = bad(mode)
    src = HttpRangeSource(url, head_bytes=1024, retries=2, backoff=0.01)
    assert src.read(5000, 4000) == DATA[5000:9000]
    assert srv.log[1:] == ["bytes=5000-8999", "bytes=5000-8999"]


@pytest.mark.parametrize("mode", ["trickle-body", "trickle-headers"])
def test_trickling_server_trips_the_overall_deadline(bad, mode):
    """A byte every 0.2 s never trips the 1 s socket timeout; the 1 s deadline of the request does."""
    srv, url = bad(mode)
    src = HttpRangeSource(url, head_bytes=1024, timeout=1, deadline=1, retries=1, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="failed after 2 attempts.*deadline"):
        src.read(5000, 1000)
    assert time.monotonic() - t0 < 10  # two attempts of ~1 s each; before: minutes


@pytest.mark.parametrize("url", [
    "http://[::1/x", "http://127.0.0.1:99999/m.st", "http://127.0.0.1:abc/m.st", "http://127.0.0.1:0/m.st",
    "http:///m.st", "ftp://127.0.0.1/m.st", "http://127.0.0.1/a b.st", "http://127.0.0.1/a\nb",
])
def test_malformed_url_is_a_source_error_at_once(url):
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="URL|percent-encode"):
        HttpRangeSource(url, retries=3, backoff=1)
    assert time.monotonic() - t0 < 0.5  # not retried as if the network were down (that takes 7 s here)


class RedirectHandler(BaseHTTPRequestHandler):
    """Redirects every GET to `server.target`; records the headers it got."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.log.append(dict(self.headers))
        self.send_response(302)
        self.send_header("Location", self.server.target)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def redirector():
    servers = []

    def start(target):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), RedirectHandler)
        srv.daemon_threads, srv.target, srv.log = True, target, []
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(srv)
        return srv, f"http://127.0.0.1:{srv.server_address[1]}/m.st"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


class HopHandler(Handler):
    """The project's server, plus /hop redirecting to `server.target`; logs each request's credentials."""

    def _serve(self, body):
        self.server.log.append((self.path, self.headers.get("Authorization"), self.headers.get("Cookie")))
        if self.path == "/hop":
            return self._error(302, "moved", {"Location": self.server.target})
        super()._serve(body)


def test_credentials_stay_in_their_origin_on_redirects(tmp_path):
    (tmp_path / "data.st").write_bytes(DATA)
    a, b = (StaticServer(("127.0.0.1", 0), {"models": tmp_path}, handler=HopHandler) for _ in range(2))
    for srv in (a, b):
        srv.log = []
        srv.start()
    secret = {"Authorization": "Bearer s3cret", "Cookie": "sid=1"}
    try:
        a.target = b.url + "models/data.st"  # another port: another origin
        src = HttpRangeSource(a.url + "hop", head_bytes=1024, headers=secret)
        assert src.read(100_000, 10) == DATA[100_000:100_010]
        assert a.log and all(entry[1:] == ("Bearer s3cret", "sid=1") for entry in a.log)
        assert b.log and all(entry[1:] == (None, None) for entry in b.log)  # never sent to the other origin
        a.log.clear()
        a.target = "/models/data.st"  # the same origin keeps them
        src = HttpRangeSource(a.url + "hop", head_bytes=1024, headers=secret)
        assert src.read(100_000, 10) == DATA[100_000:100_010]
        assert ("/models/data.st", "Bearer s3cret", "sid=1") in a.log
    finally:
        for srv in (a, b):
            srv.shutdown()
            srv.server_close()


def test_redirect_to_ftp_is_refused_not_followed(redirector):
    srv, url = redirector("ftp://127.0.0.1/m.st")
    with pytest.raises(SourceError, match="not a valid http"):
        HttpRangeSource(url, retries=3, backoff=0.01)
    assert len(srv.log) == 1


def test_redirect_to_a_malformed_url_is_a_source_error(redirector):
    """Found by the HTTP fuzzer: urllib parsed the Location itself and raised a bare ValueError."""
    srv, url = redirector("http://[::1")
    with pytest.raises(SourceError, match="malformed URL|not a valid URL"):
        HttpRangeSource(url, retries=3, backoff=0.01)
    assert len(srv.log) == 1


def test_http_sources_build_no_tls_context(served, monkeypatch):
    """Loading the system's certificates takes ~0.1 s: done once at the first https request, never for http."""
    import ssl

    calls = []
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: calls.append(1) or real(*a, **k))
    srv, _ = served
    for _ in range(5):
        assert HttpRangeSource(srv.url + "data.bin", head_bytes=16).read(0, 4) == DATA[:4]
    assert calls == []
