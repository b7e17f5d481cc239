"""Fuzzing the HTTP range source against a misbehaving local server: wrong statuses, Content-Range and
Content-Length, cut or padded bodies, compression, dropped validators, redirects, noise, and the file
replaced mid-read. Every read returns the bytes of one version of the file or raises SourceError, within
10 s and 64 MB a case. tools/fuzz.py runs the same cases longer (and with slow answers)."""

import functools

import pytest

import fuzz_util

CASES, SEED = 2000, 20261201
TIME_LIMIT, MEM_LIMIT = 10.0, 64 << 20


@pytest.fixture
def server():
    srv = fuzz_util.start_misbehaving_server()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_http_source_fuzz(server):
    case = functools.partial(fuzz_util.http_case, srv=server)
    report = fuzz_util.run("http", case, CASES, SEED, TIME_LIMIT, MEM_LIMIT, mem_every=8)
    assert not report.failures, "\n".join(report.failures)
    assert set(report.outcomes) == {"bytes right", "refused: SourceError"}, report.outcomes
    assert min(report.outcomes.values()) >= CASES // 10, report.outcomes
    assert report.slowest < TIME_LIMIT and report.peak < MEM_LIMIT
