"""web/webrwkv.d.ts types the whole API: tsc (pinned in package-lock.json) checks a usage file against
it, including mistakes the types must reject, and every export of webrwkv.js is declared."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TSC = ROOT / "node_modules" / ".bin" / "tsc"


def test_the_usage_file_type_checks():
    if not TSC.exists():
        pytest.fail("node_modules/.bin/tsc is missing: run tools/setup.sh (npm ci installs the pinned typescript)")
    r = subprocess.run([str(TSC), "-p", str(ROOT / "tests" / "types" / "tsconfig.json")], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_export_is_typed():
    js = (ROOT / "web" / "webrwkv.js").read_text(encoding="utf-8")
    dts = (ROOT / "web" / "webrwkv.d.ts").read_text(encoding="utf-8")
    exported = set(re.findall(r"^export (?:async function|function|class|const) (\w+)", js, re.M))
    declared = set(re.findall(r"^export (?:function|class|const) (\w+)", dts, re.M))
    assert exported and exported == declared
    engine_methods = set(re.findall(r"^  (?:async )?(\w+)\(", js[js.index("class Engine"):], re.M)) - {"constructor"}
    public = {m for m in engine_methods if not m.startswith("_")}
    typed = set(re.findall(r"^  (\w+)\(", dts[dts.index("export interface Engine "):], re.M))
    assert public <= typed, f"Engine methods without types: {sorted(public - typed)}"
