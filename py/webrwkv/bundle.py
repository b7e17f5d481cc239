"""`webrwkv bundle OUT_DIR`: a self-contained static site (the page, the JS API, the worker, Pyodide,
the webrwkv wheel and models) that any web server with HTTP Range support can host, at any path."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .errors import WebRwkvError

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = ".webrwkv-bundle"  # written into every bundle, so --force only ever replaces a bundle
SITE_EXTS = (".html", ".js", ".css", ".d.ts")
VENDOR_NEEDS = ("pyodide/pyodide.mjs", "pyodide/pyodide.asm.wasm", "pyodide/python_stdlib.zip",
                "pyodide/pyodide-lock.json", "marked/marked.esm.js", "dompurify/purify.es.mjs")
README = """# webrwkv static bundle

Serve this folder with any static web server that answers HTTP Range requests (nginx, Apache,
Caddy, GitHub Pages, S3/CloudFront, ...), at the root or under a sub-path, then open index.html.
WebGPU needs https:// (or localhost).

- index.html, app.js, *-view.js, store.js, markdown.js, ui.js, style.css: the page
- webrwkv.js (+ webrwkv.d.ts), worker.js, loader.js, fetch-worker.js, gpu_helper.js: the JS API and its
  workers
- vendor/pyodide/: Pyodide with numpy and micropip; vendor/marked, vendor/dompurify: the page's markdown
- wheels/: the webrwkv wheel and wheels/index.json; models/: the models, their vocabularies and
  model cards, and models/index.json

The server must send .mjs files as JavaScript (text/javascript) and .wasm as application/wasm.
To use the engine from pages on other origins, send `Access-Control-Allow-Origin` on these files
and expose `Content-Range, Content-Length, ETag` (as a CDN would).
"""


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise WebRwkvError(f"{what} is missing ({path}); run tools/setup.sh in the webrwkv checkout first")
    return path


def _wheel(dist: Path) -> Path:
    wheels = sorted(dist.glob("webrwkv-*.whl"))
    if len(wheels) != 1:
        raise WebRwkvError(f"expected one webrwkv wheel in {dist}, found {len(wheels)}; run tools/setup.sh "
                           "(it builds the wheel)")
    return wheels[0]


def _model_files(model: str) -> list[Path]:
    """The model file, checked to be an RWKV safetensors file, and its vocabulary and card if present."""
    from .model_card import load_card
    from .models import load_index

    p = Path(model)
    if "://" in model:
        raise WebRwkvError(f"--model {model}: give a local file (download it first); a bundle holds its models")
    if not p.is_file():
        raise WebRwkvError(f"--model {model} is not a file; pass the .st / .safetensors model file")
    if p.suffix.lower() not in (".st", ".safetensors"):
        raise WebRwkvError(f"--model {model}: only .st / .safetensors files stream into the browser "
                           "(convert .pth files with `webrwkv convert`)")
    load_index(str(p))  # a clear error now rather than in a visitor's browser
    load_card(str(p))   # a broken card too
    extra = [p.with_name(p.stem + s) for s in (".vocab.txt", ".card.json")]
    return [p, *[e for e in extra if e.is_file()]]


def _copy_site(web: Path, out: Path) -> None:
    for f in sorted(web.iterdir()):
        if f.is_file() and f.name.endswith(SITE_EXTS):
            shutil.copyfile(f, out / f.name)
    vendor = web / "vendor"
    for need in VENDOR_NEEDS:
        _need(vendor / need, f"web/vendor/{need}")
    shutil.copytree(vendor, out / "vendor", ignore=shutil.ignore_patterns(".*"))


def _listing(folder: Path, key: str, files: Sequence[Path]) -> None:
    """index.json like `webrwkv serve` writes, with URLs relative to it (so any sub-path works)."""
    entries = [{"name": f.name, "size": f.stat().st_size, "url": f.name} for f in files]
    (folder / "index.json").write_text(json.dumps({key: entries}, indent=1) + "\n", encoding="utf-8")


def write_bundle(out_dir: str | os.PathLike, models: Sequence[str] | None = None, force: bool = False,
                 web: Path | None = None, dist: Path | None = None) -> Path:
    """Write the bundle into out_dir (made whole in a temporary folder next to it, then moved in place,
    so an error leaves nothing half-written). models None means the bundled model; [] means none."""
    from .models import default_model_path

    out = Path(out_dir).resolve()
    web = web or REPO_ROOT / "web"
    dist = dist or REPO_ROOT / "dist"
    _need(web / "index.html", "the page (web/index.html of a source checkout)")
    wheel = _wheel(_need(dist, "the dist/ folder with the webrwkv wheel"))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise WebRwkvError(f"{out} exists and is not empty; pick a new folder, or pass --force to replace "
                               "an earlier bundle")
        if not (out / MARKER).is_file():
            raise WebRwkvError(f"{out} is not a webrwkv bundle (it has no {MARKER}); refusing to replace it")
    picked = [default_model_path()] if models is None else list(models)
    files = [f for m in picked for f in _model_files(m)]
    names = [f.name for f in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise WebRwkvError(f"two models share the file names {dupes}; rename one of them")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a web server must be able to read it
        _copy_site(web, tmp)
        (tmp / "wheels").mkdir()
        shutil.copyfile(wheel, tmp / "wheels" / wheel.name)
        _listing(tmp / "wheels", "wheels", [tmp / "wheels" / wheel.name])
        (tmp / "models").mkdir()
        for f in files:
            shutil.copyfile(f, tmp / "models" / f.name)
        _listing(tmp / "models", "models", [tmp / "models" / f.name for f in files if f.suffix in (".st", ".safetensors")])
        (tmp / "README.md").write_text(README, encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps({"wheel": wheel.name, "models": [Path(m).name for m in picked]}) + "\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def bundle_main(args: Any) -> int:
    """`webrwkv bundle OUT_DIR [--model FILE ...] [--no-model] [--force]`."""
    if args.no_model and args.model:
        raise WebRwkvError("--no-model and --model exclude each other; pick one")
    out = write_bundle(args.out_dir, [] if args.no_model else args.model, force=args.force)
    models = json.loads((out / "models" / "index.json").read_text())["models"]
    print(f"webrwkv: wrote {out} ({_size(out) / 1e6:.1f} MB; models: {', '.join(m['name'] for m in models) or 'none'})")
    print("Serve it with any static server that supports HTTP Range (see its README.md), then open index.html.")
    return 0
