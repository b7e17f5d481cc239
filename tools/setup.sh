#!/usr/bin/env bash
# Set up everything webrwkv needs on Debian/Ubuntu: system packages, .venv, npm packages,
# vendored Pyodide and the project wheel. Each step is skipped when its inputs are unchanged.
#
# Env: CHROMIUM_PATH (default /usr/bin/chromium), PYTHON (default python3),
#      WEBRWKV_SKIP_APT=1 to never touch system packages,
#      WEBRWKV_PYODIDE_ARCHIVE=FILE|URL to take Pyodide's wheels from its official release archive.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CHROMIUM_PATH=${CHROMIUM_PATH:-/usr/bin/chromium}
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
WARNINGS=()

log() { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; WARNINGS+=("$*"); }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# key FILE...: one hash over the names and contents of the given files (missing files count as empty).
key() { for f in "$@"; do printf '%s\n' "$f"; cat "$f" 2>/dev/null || true; done | sha256sum | cut -c1-64; }
# fresh STAMP KEY: true when STAMP holds KEY, i.e. the step already ran with these inputs.
fresh() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

python_ok() { "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
node_ok() { command -v npm >/dev/null && node -e 'process.exit(parseInt(process.versions.node) < 18 ? 1 : 0)' 2>/dev/null; }

# --- 1. system packages -------------------------------------------------------------
system_packages() {
    local missing=()
    python_ok || missing+=(python3 python3-venv)
    node_ok || missing+=(nodejs npm)
    [ -x "$CHROMIUM_PATH" ] || missing+=(chromium)
    compgen -G '/usr/lib/*-linux-gnu/libvulkan.so.1' >/dev/null || missing+=(libvulkan1)
    compgen -G '/usr/share/vulkan/icd.d/lvp_icd*.json' >/dev/null || missing+=(mesa-vulkan-drivers)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)  # the static-bundle test
    [ ${#missing[@]} -eq 0 ] && return 0

    if [ "${WEBRWKV_SKIP_APT:-0}" = 1 ] || ! command -v apt-get >/dev/null; then
        warn "missing system packages: ${missing[*]} (install them with your package manager)"
    elif [ "$(id -u)" = 0 ]; then
        log "installing system packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || warn "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || warn "apt-get could not install: ${missing[*]} (install them by hand)"
    else
        warn "missing system packages: ${missing[*]}. Install them with:
    sudo apt-get update && sudo apt-get install -y ${missing[*]}
  (continuing with what can be set up without them)"
    fi
}

# --- 2. Python venv with pinned deps and the project installed editable --------------
python_env() {
    python_ok || die "Python >= 3.11 with venv/ensurepip is required (Debian/Ubuntu: apt-get install python3 python3-venv)"
    local k stamp=.venv/.setup-stamp
    k=$(key requirements.txt requirements-dev.txt pyproject.toml; "$PYTHON" --version)
    if [ -x .venv/bin/python ] && fresh "$stamp" "$k"; then return 0; fi
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        log "creating .venv with $("$PYTHON" --version)"
        rm -rf .venv
        "$PYTHON" -m venv .venv
    fi
    log "installing pinned Python packages"
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
    # Editable install; skipped when the project is already importable from this tree.
    if ! .venv/bin/python -c 'import pathlib, sys, webrwkv; sys.exit(pathlib.Path(webrwkv.__file__).resolve().parents[1] != pathlib.Path("py").resolve())' 2>/dev/null \
        || [ ! -x .venv/bin/webrwkv ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    fi
    echo "$k" > "$stamp"
}

# --- 3. npm packages from the lock file (Playwright must not download browsers) ---------
npm_packages() {
    node_ok || { warn "skipping npm packages and Pyodide: Node.js >= 18 with npm is missing"; return 1; }
    local k stamp=node_modules/.setup-stamp
    k=$(key package-lock.json; node --version)
    fresh "$stamp" "$k" && return 0
    log "installing npm packages (npm ci)"
    npm ci --no-audit --no-fund --no-update-notifier --loglevel=error
    echo "$k" > "$stamp"
}

# --- 4. Pyodide for the browser, served from the same origin --------------------------
pyodide() {
    .venv/bin/python tools/vendor_pyodide.py
}

# --- 4b. the page's JS libraries (markdown, HTML sanitizer) from the npm lock, same origin ---------
web_libs() {
    local k stamp=web/vendor/.libs-stamp
    k=$(key package-lock.json node_modules/marked/lib/marked.esm.js node_modules/dompurify/dist/purify.es.mjs)
    fresh "$stamp" "$k" && [ -f web/vendor/marked/marked.esm.js ] && return 0
    log "copying marked and DOMPurify into web/vendor/"
    mkdir -p web/vendor/marked web/vendor/dompurify
    cp node_modules/marked/lib/marked.esm.js node_modules/marked/LICENSE web/vendor/marked/
    cp node_modules/dompurify/dist/purify.es.mjs node_modules/dompurify/LICENSE web/vendor/dompurify/
    echo "$k" > "$stamp"
}

# --- 5. the project wheel in dist/, installed by micropip in the browser ---------------
project_wheel() {
    local k stamp=dist/.setup-stamp
    k=$(key pyproject.toml README.md $(find py shaders -type f ! -name '*.pyc' ! -path '*/__pycache__/*' 2>/dev/null | LC_ALL=C sort))
    if fresh "$stamp" "$k" && ls dist/webrwkv-*.whl >/dev/null 2>&1; then return 0; fi
    log "building the webrwkv wheel into dist/"
    mkdir -p dist
    rm -f dist/webrwkv-*.whl
    .venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w dist . >/dev/null
    local whl; whl=$(ls dist/webrwkv-*.whl)
    .venv/bin/python - "$whl" <<'EOF' || die "the wheel lacks files the browser needs (see above)"
import pathlib, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
want = [f"webrwkv/shaders/{p.name}" for p in pathlib.Path("shaders").glob("*.wgsl")]
want += [f"webrwkv/data/{p.name}" for p in pathlib.Path("py/webrwkv/data").glob("*") if p.is_file()]
missing = [n for n in want if n not in names]
for n in missing:
    print(f"missing from wheel: {n}", file=sys.stderr)
sys.exit(bool(missing))
EOF
    echo "$k" > "$stamp"
}

# One setup at a time (e.g. start.sh and test.sh started together).
mkdir -p build
exec 9>build/.setup.lock
command -v flock >/dev/null && flock 9

system_packages
python_env
if npm_packages; then pyodide; web_libs; fi
project_wheel
if [ ${#WARNINGS[@]} -gt 0 ]; then
    printf '[setup] done, with warnings:\n'; printf '  - %s\n' "${WARNINGS[@]}"
else
    log "ready"
fi
