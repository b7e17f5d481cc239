"""`webrwkv bundle`: the folder holds everything a static host needs (and index listings with relative
URLs), refuses bad models and non-bundle folders, and never leaves a half-written folder behind.
(tests/e2e/bundle.spec.js serves a bundle with nginx and runs it in a browser.)"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from webrwkv.bundle import MARKER, write_bundle
from webrwkv.errors import WebRwkvError

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "rwkv7-shakespeare.st"


def test_a_bundle_holds_the_page_engine_pyodide_wheel_and_models(tmp_path):
    out = write_bundle(tmp_path / "site", [str(BUNDLED), str(ROOT / "tests" / "golden" / "v7.st")])
    for f in ("index.html", "app.js", "style.css", "webrwkv.js", "webrwkv.d.ts", "worker.js", "loader.js", "fetch-worker.js",
              "gpu_helper.js", "markdown.js", "store.js", "vendor/pyodide/pyodide.mjs", "vendor/pyodide/pyodide.asm.wasm",
              "vendor/marked/marked.esm.js", "vendor/dompurify/purify.es.mjs", "README.md", MARKER):
        assert (out / f).is_file(), f
    assert not (out / "test").exists()  # the project's own test pages stay out
    lock = json.loads((out / "vendor" / "pyodide" / "pyodide-lock.json").read_text())
    for pkg in ("numpy", "micropip", "packaging"):
        assert (out / "vendor" / "pyodide" / lock["packages"][pkg]["file_name"]).is_file()
    wheels = json.loads((out / "wheels" / "index.json").read_text())["wheels"]
    assert len(wheels) == 1 and wheels[0]["url"] == wheels[0]["name"]  # relative: works under any sub-path
    assert "webrwkv/browser_entry.py" in zipfile.ZipFile(out / "wheels" / wheels[0]["name"]).namelist()
    models = json.loads((out / "models" / "index.json").read_text())["models"]
    assert [(m["name"], m["url"], m["size"]) for m in models] == [
        ("rwkv7-shakespeare.st", "rwkv7-shakespeare.st", BUNDLED.stat().st_size), ("v7.st", "v7.st", 614760)]
    assert (out / "models" / "rwkv7-shakespeare.st").read_bytes() == BUNDLED.read_bytes()
    for extra in ("rwkv7-shakespeare.vocab.txt", "rwkv7-shakespeare.card.json"):
        assert (out / "models" / extra).read_bytes() == (ROOT / "models" / extra).read_bytes()
    assert oct(out.stat().st_mode & 0o055) != "0o0"  # others may read it (a web server's user)


def test_the_cli_and_its_errors(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "webrwkv", "bundle", *argv], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
    r = run(str(tmp_path / "b"), "--no-model")
    assert r.returncode == 0 and "models: none" in r.stdout
    assert json.loads((tmp_path / "b" / "models" / "index.json").read_text()) == {"models": []}
    r = run(str(tmp_path / "b"), "--no-model")
    assert r.returncode == 2 and "--force" in r.stderr
    assert run(str(tmp_path / "b"), "--no-model", "--force").returncode == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = run(str(tmp_path / "mine"), "--force", "--no-model")
    assert r.returncode == 2 and "not a webrwkv bundle" in r.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "bad.st").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    for model, words in ((tmp_path / "bad.st", "header"), (tmp_path / "none.st", "is not a file"),
                         (ROOT / "README.md", "only .st / .safetensors"), ("https://example.org/m.st", "local file")):
        r = run(str(tmp_path / "c"), "--model", str(model))
        assert r.returncode == 2 and words in r.stderr, r.stderr
        assert not (tmp_path / "c").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "bad.st", "mine"]  # no temporary folders left


def test_a_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    import webrwkv.bundle as b

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(b, "_listing", boom)
    with pytest.raises(OSError):
        write_bundle(tmp_path / "site", [str(BUNDLED)])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WebRwkvError, match="share the file names"):
        write_bundle(tmp_path / "site", [str(BUNDLED), str(BUNDLED)])
