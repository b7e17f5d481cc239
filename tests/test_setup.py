"""tools/setup.sh's system-package step against a fake apt-get: it waits (bounded) while another apt
holds the dpkg lock, and fails with a clear message when a package the tests need stays missing."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_APT = """#!/bin/sh
# counts its calls; "locked" for the first $LOCKED install calls, then does what $MODE says
n=$(cat "$STATE/calls" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$STATE/calls"
echo "$@" >> "$STATE/log"
case "$*" in *update*) exit 0;; esac
installs=$(grep -c install "$STATE/log")
if [ "$installs" -le "$LOCKED" ]; then
    echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)" >&2
    exit 100
fi
if [ "$MODE" = ok ]; then printf '#!/bin/sh\\n' > "$CHROMIUM_PATH"; chmod +x "$CHROMIUM_PATH"; exit 0; fi
echo "E: Unable to locate package chromium" >&2
exit 100
"""


def run_setup_step(tmp_path, locked=0, mode="ok", uid=0, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apt-get").write_text(FAKE_APT)
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STATE": str(tmp_path),
                "CHROMIUM_PATH": str(tmp_path / "chromium"), "LOCKED": str(locked), "MODE": mode,
                "WEBRWKV_APT_POLL": "0.1", "WEBRWKV_SKIP_APT": "0", "WEBRWKV_ALLOW_MISSING": "0", **env}
    proc = subprocess.run(["bash", "-c", "source tools/setup.sh && system_packages"], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=60)
    log = (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
    return proc, log


def test_waits_for_another_apt_then_installs(tmp_path):
    proc, log = run_setup_step(tmp_path, locked=2)
    assert proc.returncode == 0, proc.stderr
    assert "waiting for another apt or dpkg" in proc.stdout + proc.stderr
    assert log.count(" install -y") == 3 and "DPkg::Lock::Timeout" in log
    assert (tmp_path / "chromium").exists()


def test_a_lock_held_too_long_is_a_clear_failure(tmp_path):
    proc, log = run_setup_step(tmp_path, locked=10**6, WEBRWKV_APT_WAIT="1")
    assert proc.returncode == 1
    assert "held its lock for over 1s" in proc.stderr and "WEBRWKV_APT_WAIT" in proc.stderr


def test_a_package_that_stays_missing_fails_setup_naming_it(tmp_path):
    proc, _ = run_setup_step(tmp_path, mode="fail")
    assert proc.returncode == 1
    assert "missing system packages the tests need: chromium" in proc.stderr
    assert "apt-get install -y chromium" in proc.stderr and "WEBRWKV_ALLOW_MISSING=1" in proc.stderr


def test_without_root_it_says_what_to_run_and_fails(tmp_path):
    proc, log = run_setup_step(tmp_path, uid=1000)
    assert proc.returncode == 1 and log == ""  # apt-get never run without root
    assert "sudo apt-get update && sudo apt-get install -y chromium" in proc.stderr


@pytest.mark.parametrize("env", [{"WEBRWKV_ALLOW_MISSING": "1"}, {"WEBRWKV_ALLOW_MISSING": "1", "WEBRWKV_SKIP_APT": "1"}])
def test_allow_missing_goes_on_with_a_warning(tmp_path, env):
    proc, _ = run_setup_step(tmp_path, mode="fail", **env)
    assert proc.returncode == 0 and "WARNING: missing system packages: chromium" in proc.stderr
