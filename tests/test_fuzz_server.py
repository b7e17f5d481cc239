"""Fuzzing the server's request parsing: request lines, paths, headers, Range values, bodies and noise,
sent raw. Every answer must be well formed, byte-exact for ranges, never a private file, and never end
in an exception in the server, within 5 s and 64 MB a case. tools/fuzz.py runs the same cases longer."""

import functools

import pytest

import fuzz_util

CASES, SEED = 3000, 20261201
TIME_LIMIT, MEM_LIMIT = 5.0, 64 << 20


@pytest.fixture
def server(tmp_path):
    srv = fuzz_util.start_server(tmp_path)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_server_request_fuzz(server):
    case = functools.partial(fuzz_util.server_case, srv=server)
    report = fuzz_util.run("server", case, CASES, SEED, TIME_LIMIT, MEM_LIMIT, mem_every=8)
    assert not report.failures, "\n".join(report.failures)
    statuses = report.outcomes
    for status in ("HTTP 200", "HTTP 206", "HTTP 400", "HTTP 404", "HTTP 412", "HTTP 416"):
        assert statuses.get(status, 0) > 0, (status, statuses)  # the fuzzer reaches each branch
    assert report.slowest < TIME_LIMIT and report.peak < MEM_LIMIT
