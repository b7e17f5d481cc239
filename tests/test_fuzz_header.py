"""Fuzzing the safetensors header and the loader's index: byte flips, cuts in every region, JSON edits,
absurd shapes, names and layer indices, from every golden model. Each case parses and loads, or raises
ModelFormatError / SourceError, within 5 s and 64 MB. tools/fuzz.py runs the same cases longer."""

import fuzz_util

CASES, SEED = 2000, 20261201
TIME_LIMIT, MEM_LIMIT = 5.0, 64 << 20  # generous safety bounds; a case takes ~5 ms and under 15 MB


def test_header_and_index_fuzz():
    report = fuzz_util.run("header", fuzz_util.header_case, CASES, SEED, TIME_LIMIT, MEM_LIMIT, mem_every=8)
    assert not report.failures, "\n".join(report.failures)
    assert report.cases == CASES
    # the mutations reach both sides: files that still load, and files refused with our own error
    assert report.outcomes.get("loaded", 0) >= CASES // 50, report.outcomes
    assert set(report.outcomes) <= {"loaded", "refused: ModelFormatError", "refused: SourceError"}
    assert report.slowest < TIME_LIMIT and report.peak < MEM_LIMIT
