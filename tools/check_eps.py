"""Check that the tests can fail: multiply each layer-norm and group-norm epsilon by 10, in the numpy
reference and in each shader, in a copy of the tree, and list the tests that catch every change.

Usage: python tools/check_eps.py [--tests tests/test_reference.py ...] [--only NAME]
Every mutation must be caught by at least one test; the exit status is 1 when one is not.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (name, file, pattern, replacement): each multiplies one epsilon by 10
MUTATIONS = [
    ("reference LayerNorm", "py/webrwkv/models/nn.py", r"LN_EPS = 1e-5", "LN_EPS = 1e-4"),
    ("reference GroupNorm (also the GPU's: one constant)", "py/webrwkv/models/nn.py", r"GN_EPS = 64e-5", "GN_EPS = 64e-4"),
    ("embed.wgsl LayerNorm (ln0)", "shaders/embed.wgsl", r"\+ 1e-5\)", "+ 1e-4)"),
    ("mix.wgsl LayerNorm (ln1, ln2)", "shaders/mix.wgsl", r"\+ 1e-5\)", "+ 1e-4)"),
    ("norm.wgsl LayerNorm (ln_out)", "shaders/norm.wgsl", r"\+ 1e-5\)", "+ 1e-4)"),
    ("wkv5.wgsl GroupNorm (v5, v6)", "shaders/wkv5.wgsl", r"var_ \+ \{\{EPS\}\}", "var_ + {{EPS}} * 10.0"),
    ("wkv7.wgsl GroupNorm", "shaders/wkv7.wgsl", r"var_ \+ \{\{EPS\}\}", "var_ + {{EPS}} * 10.0"),
]
TESTS = ["tests/test_reference.py", "tests/test_gpu_runtime.py", "tests/test_time_mix_kernels.py",
         "tests/test_bundled_model.py"]


def failing(tree: Path, tests: list[str]) -> list[str]:
    """The ids of the tests that fail in `tree` (run with its own webrwkv first on the path)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests],
                       cwd=tree, capture_output=True, text=True, env={"PYTHONPATH": str(tree / "py"), "PATH": "/usr/bin:/bin"})
    return sorted(set(re.findall(r"^FAILED (\S+)", r.stdout, flags=re.M)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tests", nargs="*", default=TESTS)
    ap.add_argument("--only", default=None, help="run the mutations whose name contains this")
    args = ap.parse_args()
    missed = 0
    with tempfile.TemporaryDirectory() as d:
        tree = Path(d) / "tree"
        for part in ("py", "shaders", "tests", "models", "pyproject.toml"):
            src = ROOT / part
            (shutil.copytree if src.is_dir() else shutil.copy)(src, tree / part)
        base = failing(tree, args.tests)
        if base:
            print("the tests fail before any change:", *base, sep="\n  ")
            return 1
        for name, rel, pattern, repl in MUTATIONS:
            if args.only and args.only not in name:
                continue
            path = tree / rel
            original = path.read_text()
            changed, n = re.subn(pattern, repl, original)
            if n == 0:
                print(f"{name}: pattern not found in {rel}")
                missed += 1
                continue
            path.write_text(changed)
            caught = failing(tree, args.tests)
            path.write_text(original)
            missed += not caught
            print(f"{name} ({n} place{'s' if n > 1 else ''}): {len(caught)} tests fail")
            for t in caught:
                print(f"    {t}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
